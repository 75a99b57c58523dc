"""GPU memory per onnxruntime CUDA session, under provider-option variants.

    python loadtests/gpu_memory.py --sessions 20          # needs onnxruntime-gpu and a GPU

Each variant runs in a fresh process: it opens one session and runs it (the CUDA
context, cuDNN and cuBLAS libraries load once per process), reads the process's GPU
memory from nvidia-smi, then opens ``--sessions`` more sessions of distinct small MLPs,
reads it again, runs each once, and reads it a third time. The figures per session are
what the store pays for each model it keeps loaded on a GPU (docs/models.md, "GPU").
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.models import make_mlp

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "cublas-workspace-4MiB": {"env": {"CUBLAS_WORKSPACE_CONFIG": ":4096:1"}},
    "cublas-4MiB+unified-stream": {
        "env": {"CUBLAS_WORKSPACE_CONFIG": ":4096:1"},
        "options": {"use_ep_level_unified_stream": "1"},
    },
    "shared-arena": {"shared_arena": True},
    "unified-stream": {"options": {"use_ep_level_unified_stream": "1"}},
    "shared-stream": {"shared_stream": True},
}


def _nvidia_smi(*args: str) -> str:
    return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=20, check=True).stdout


def gpu_memory_used_mib(index: int = 0) -> float:
    """The memory in use on one GPU, every process's (nvidia-smi)."""
    return float(_nvidia_smi("--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", str(index)).split()[0])


def process_gpu_mib(pid: int) -> float:
    """One process's GPU memory; the whole GPU's where nvidia-smi lists no processes (containers)."""
    for line in _nvidia_smi("--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits").splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid):
            return float(fields[1])
    return gpu_memory_used_mib()


def _cuda_stream() -> int:
    """A CUDA stream from the cudart that onnxruntime-gpu loaded (preload_dlls: found by soname)."""
    lib = ctypes.CDLL("libcudart.so.13")
    stream = ctypes.c_void_p()
    rc = lib.cudaStreamCreate(ctypes.byref(stream))
    if rc != 0:
        raise RuntimeError(f"cudaStreamCreate returned {rc}")
    return int(stream.value or 0)


def child(variant: str, sessions: int, folder: Path) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    spec = VARIANTS[variant]
    ort.set_default_logger_severity(3)
    ort.preload_dlls()
    options = {"device_id": "0", "arena_extend_strategy": "kSameAsRequested", **spec.get("options", {})}
    if spec.get("shared_stream"):
        options.update(has_user_compute_stream="1", user_compute_stream=str(_cuda_stream()))
    so_entries: dict[str, str] = {}
    if spec.get("shared_arena"):
        info = ort.OrtMemoryInfo("Cuda", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator_v2("CUDAExecutionProvider", info, {}, ort.OrtArenaCfg(0, -1, -1, -1))
        so_entries["session.use_env_allocators"] = "1"
    x = np.ones((4, 16), dtype=np.float32)

    def session(i: int) -> Any:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        for k, v in so_entries.items():
            so.add_session_config_entry(k, v)
        s = ort.InferenceSession(str(folder / f"m{i}.onnx"), so, providers=[("CUDAExecutionProvider", options)])
        assert s.get_providers()[0] == "CUDAExecutionProvider", s.get_providers()
        return s

    pid = os.getpid()
    first = session(0)
    first.run(None, {"x": x})
    base = process_gpu_mib(pid)
    held = [session(i + 1) for i in range(sessions)]
    created = process_gpu_mib(pid)
    for s in held:
        s.run(None, {"x": x})
    ran = process_gpu_mib(pid)
    return {
        "variant": variant,
        "sessions": sessions,
        "process_mib_after_first": base,
        "per_session_created_mib": round((created - base) / sessions, 1),
        "per_session_after_run_mib": round((ran - base) / sessions, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.sessions, Path(args.dir))))
        return
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        sys.exit(f"needs onnxruntime-gpu (this onnxruntime {ort.__version__} has {ort.get_available_providers()})")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.sessions + 1):
            make_mlp(Path(tmp) / f"m{i}.onnx", seed=i)
        for variant in args.variants.split(","):
            env = {**os.environ, **VARIANTS[variant].get("env", {})}
            cmd = [sys.executable, __file__, "--child", variant, "--sessions", str(args.sessions), "--dir", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)
            lines = proc.stdout.strip().splitlines()
            print(lines[-1] if proc.returncode == 0 and lines else f"{variant}: failed: {proc.stderr[-600:]}")


if __name__ == "__main__":
    main()
