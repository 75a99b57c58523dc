"""What a process does once before its first CUDA session: size cuBLAS's workspace, quiet
onnxruntime's per-session warning, and load the CUDA libraries.

    prepare_cuda(cublas_workspace_mb)                     once per process that runs models on CUDA
    cublas_workspace_config(mb, current)                  -> CUBLAS_WORKSPACE_CONFIG or None (pure)

Nothing here runs on a CPU-only onnxruntime build.
"""

from __future__ import annotations

import logging
import os

import onnxruntime as ort

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
_CUBLAS_WORKSPACE = "CUBLAS_WORKSPACE_CONFIG"
_dlls_preloaded = False


def cublas_workspace_config(mb: int, *, current: str | None) -> str | None:
    """The ``CUBLAS_WORKSPACE_CONFIG`` to set for ``gpu_cublas_workspace_mb``; None: leave it alone,
    for 0 (cuBLAS's default) or when the variable is set already (an operator's value wins).
    """
    if mb <= 0 or current is not None:
        return None
    return f":{mb * 1024}:1"  # one buffer of that many KiB


def prepare_cuda(cublas_workspace_mb: int) -> None:
    """Before the first CUDA session of this process (later calls change nothing)."""
    if CUDA not in ort.get_available_providers():
        return  # a CPU-only build: nothing to size or load, and trying would only log noise
    _size_cublas_workspace(cublas_workspace_mb)
    _preload_cuda_dlls()


def _size_cublas_workspace(mb: int) -> None:
    """Set the cuBLAS workspace of every handle this process creates, before cuBLAS loads.

    NOTE: each CUDA session creates its own cuBLAS handles, each with a workspace (about 60 MiB
    apiece on Hopper by default): that, not the model, is most of a small model's GPU memory.
    A cuBLAS that user code loaded already keeps the workspace it started with.
    """
    value = cublas_workspace_config(mb, current=os.environ.get(_CUBLAS_WORKSPACE))
    if value is not None:
        os.environ[_CUBLAS_WORKSPACE] = value
        logger.info("cuBLAS workspace: %d MB per handle (gpu_cublas_workspace_mb)", mb)


def _preload_cuda_dlls() -> None:
    global _dlls_preloaded
    preload = getattr(ort, "preload_dlls", None)
    if _dlls_preloaded or preload is None:
        return
    _dlls_preloaded = True
    # onnxruntime 1.31 logs a warning through its default logger for every CUDA session
    # ("No registered plugin EP device found"), which session options cannot silence:
    # 1,000 models would log 1,000 of them. Its errors still reach the log.
    ort.set_default_logger_severity(3)
    try:
        preload()
    except Exception as exc:
        logger.warning("onnxruntime.preload_dlls() failed: %s", exc)
