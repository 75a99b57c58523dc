"""The CPU and GPU images, built and run for real.

CPU image: the example entry script mounted (Azure ML's layout) and baked in; healthy by its own
HEALTHCHECK, /score right, non-root, PID 1, a fast clean `docker stop`, and a broken init() that
ends the container with the traceback in its log. GPU image, on a machine without a GPU: the CUDA
provider is there, the CUDA libraries load, only the driver library is missing, and inference falls
back to the CPU with correct results.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import ROOT, Container, docker

pytestmark = [pytest.mark.container, pytest.mark.timeout(1200)]

SAMPLE = ROOT / "examples" / "sample-request.json"
KEY = ["-e", "SCOREHOST_PRIMARY_KEY=container-test-key"]  # the images default to auth_mode=key
MOUNT = ["-e", "AZUREML_ENTRY_SCRIPT=score.py", "-e", "AZUREML_MODEL_DIR=/var/azureml-app/model", *KEY]
HEALTHY_WITHIN_S = 60  # measured ~2 s; the bound only stops a hung test
UID = "10001"

# Runs inside the container (python, no curl there): POST the sample, print status and body.
POST_SAMPLE = """
import os, sys, urllib.request, urllib.error
body = open(sys.argv[1], 'rb').read()
url = 'http://127.0.0.1:5001' + sys.argv[2]
auth = 'Bearer ' + os.environ.get('SCOREHOST_PRIMARY_KEY', '')
req = urllib.request.Request(url, body, {'Content-Type': 'application/json', 'Authorization': auth})
try:
    with urllib.request.urlopen(req, timeout=20) as r:
        print(r.status); print(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); print(e.read().decode())
"""


def expected_predictions() -> np.ndarray[Any, Any]:
    """The example model run on the host: what every container must answer."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(ROOT / "examples" / "model" / "model.onnx"), providers=["CPUExecutionProvider"])
    data = np.asarray(json.loads(SAMPLE.read_text())["data"], dtype=np.float32)
    (out,) = session.run(None, {"data": data})
    return np.asarray(out)


def post(container: Container, body_path: str, path: str = "/score") -> tuple[int, Any]:
    # `healthy` is liveness, which answers while init() runs: a 503 before readiness is retried.
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while True:
        result = container.exec("python", "-c", POST_SAMPLE, body_path, path)
        assert result.returncode == 0, result.stderr + container.logs()
        status, _, body = result.stdout.partition("\n")
        if int(status) != 503 or time.monotonic() > deadline:
            return int(status), json.loads(body)
        time.sleep(0.5)


def check_scores(container: Container, body_path: str) -> None:
    status, body = post(container, body_path)
    assert status == 200, body
    predictions = np.asarray(body["predictions"], dtype=np.float32)
    expected = expected_predictions()
    assert predictions.shape == expected.shape == (1, 8)
    np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-6)


def test_cpu_image_serves_a_mounted_entry_script_and_stops_cleanly(
    cpu_image: str, run_container: Callable[..., Container], app_dir: Path
) -> None:
    # A read-only root file system, as the Kubernetes manifests set it (docs/security.md).
    c = run_container(cpu_image, "--read-only", "-v", f"{app_dir}:/var/azureml-app:ro", *MOUNT)
    healthy_after = c.wait_healthy(HEALTHY_WITHIN_S)
    print(f"\nhealthy after {healthy_after:.1f} s")
    check_scores(c, "/var/azureml-app/sample-request.json")
    assert "Read-only file system" not in c.logs() and "Failed to persist" not in c.logs()

    # Non-root, and the server itself is PID 1 (exec-form ENTRYPOINT), so it gets SIGTERM.
    assert c.inspect()["Config"]["User"].split(":")[0] == UID
    assert c.exec("id", "-u").stdout.strip() == UID
    pid1 = c.exec("cat", "/proc/1/cmdline").stdout.split("\0")
    assert any(part.endswith("scorehost") for part in pid1), pid1
    assert "Uid:\t" + UID in c.exec("cat", "/proc/1/status").stdout
    # The probe the HEALTHCHECK uses answers the way the health state says.
    assert c.exec("scorehost", "probe").returncode == 0
    assert c.exec("scorehost", "probe", "--port", "1").returncode == 1

    started = time.monotonic()
    docker("stop", "-t", "10", c.id, timeout=30)
    stopped_in = time.monotonic() - started
    state = c.inspect()["State"]
    print(f"docker stop took {stopped_in:.2f} s, exit code {state['ExitCode']}")
    # The server drains (2 s shutdown delay, nothing in flight) and exits 0 by itself; a server
    # that ignored SIGTERM would be SIGKILLed at 10 s with exit code 137.
    assert state["ExitCode"] == 0, c.logs()
    assert stopped_in < 6, c.logs()


def test_baked_image_serves_without_mounts(baked_image: str, run_container: Callable[..., Container]) -> None:
    c = run_container(baked_image, *KEY)
    c.wait_healthy(HEALTHY_WITHIN_S)
    # The bake example puts nothing but score.py and the model in; the sample goes in over exec.
    c.write("/tmp/sample.json", SAMPLE.read_text())
    check_scores(c, "/tmp/sample.json")
    assert "AZUREML_ENTRY_SCRIPT=score.py" in c.inspect()["Config"]["Env"]


def test_failing_init_ends_the_container_with_the_traceback(
    cpu_image: str, run_container: Callable[..., Container], app_dir: Path
) -> None:
    c = run_container(cpu_image, "-v", f"{app_dir}:/var/azureml-app:ro", "-e", "AZUREML_ENTRY_SCRIPT=bad_init.py", *KEY)
    exit_code = c.wait_exit(timeout=60)
    logs = c.logs()
    assert exit_code != 0, logs
    assert "Traceback (most recent call last)" in logs
    assert "RuntimeError: boom in init" in logs
    assert c.inspect()["State"].get("Health", {}).get("Status") != "healthy"


def test_cpu_image_without_a_key_exits_2_saying_so(
    cpu_image: str, run_container: Callable[..., Container], app_dir: Path
) -> None:
    # The images default to auth_mode=key: listening on every interface with no key is refused.
    c = run_container(cpu_image, "-v", f"{app_dir}:/var/azureml-app:ro", *MOUNT[:4])
    assert c.wait_exit(timeout=60) == 2
    assert "auth_mode=key needs keys" in c.logs()


# --- GPU image, without a GPU --------------------------------------------------------------------
GPU_CHECK = r"""
import json, os, re, sys
import numpy as np
import onnxruntime as ort
report = {"version": ort.__version__, "providers": ort.get_available_providers()}
ort.preload_dlls()
maps = open('/proc/self/maps').read()
libs = re.findall(r'(/\S+\.so[.\d]*)', maps)
report["loaded"] = sorted({os.path.basename(m) for m in libs if '/nvidia/' in m})
session = ort.InferenceSession(sys.argv[1], providers=['CUDAExecutionProvider', 'CPUExecutionProvider'])
report["session_providers"] = session.get_providers()
data = np.asarray(json.load(open(sys.argv[2]))['data'], dtype=np.float32)
report["predictions"] = session.run(None, {'data': data})[0].tolist()
print(json.dumps(report))
"""

LDD_CHECK = r"""
SP=$(python -c 'import onnxruntime, os; print(os.path.dirname(os.path.dirname(onnxruntime.__file__)))')
export LD_LIBRARY_PATH="$(ls -d "$SP"/nvidia/*/lib | tr '\n' ':')"
ldd "$SP/onnxruntime/capi/libonnxruntime_providers_cuda.so"
"""


def test_gpu_image_has_cuda_and_falls_back_to_cpu(gpu_image: str, app_dir: Path) -> None:
    result = docker(
        "run", "--rm", "--network", "none", "--label", "io.scorehost.test", "-v", f"{app_dir}:/app:ro",
        "--entrypoint", "python", gpu_image,
        "-c", GPU_CHECK, "/app/model/model.onnx", "/app/sample-request.json",
        timeout=120,
    )  # fmt: skip
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "CUDAExecutionProvider" in report["providers"], report
    # preload_dlls() found and loaded the CUDA user-space libraries of the nvidia-* wheels.
    loaded = {re.sub(r"\.so.*", "", name) for name in report["loaded"]}
    assert {
        "libcudart",
        "libcublas",
        "libcublasLt",
        "libcudnn",
        "libcufft",
        "libcurand",
        "libnvrtc",
    } <= loaded
    # No GPU here: the session falls back to the CPU provider, with correct results.
    assert report["session_providers"] == ["CPUExecutionProvider"]
    np.testing.assert_allclose(np.asarray(report["predictions"]), expected_predictions(), rtol=1e-5, atol=1e-6)

    ldd = docker("run", "--rm", "--network", "none", "--entrypoint", "sh", gpu_image, "-c", LDD_CHECK, timeout=60)
    missing = sorted(set(re.findall(r"^\s*(\S+) => not found", ldd.stdout, re.MULTILINE)))
    # libcuda.so.1 is the driver's, injected by the NVIDIA Container Toolkit under --gpus.
    assert missing == ["libcuda.so.1"], ldd.stdout


def test_gpu_image_serves_on_cpu_without_a_gpu(
    gpu_image: str, run_container: Callable[..., Container], app_dir: Path
) -> None:
    # No entry script: the model store serves model/ over the V2 protocol with device "auto",
    # which must fall back to the CPU here instead of failing.
    c = run_container(
        gpu_image, "-v", f"{app_dir}:/var/azureml-app:ro", "-e", "AZUREML_MODEL_DIR=/var/azureml-app/model", *KEY
    )
    c.wait_healthy(HEALTHY_WITHIN_S)
    data = json.loads(SAMPLE.read_text())["data"]
    request = {
        "inputs": [{"name": "data", "shape": [1, 64], "datatype": "FP32", "data": [x for row in data for x in row]}]
    }
    c.write("/tmp/v2.json", json.dumps(request))
    status, body = post(c, "/tmp/v2.json", "/v2/models/model/infer")
    assert status == 200, (body, c.logs())
    (output,) = body["outputs"]
    got = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    np.testing.assert_allclose(got, expected_predictions(), rtol=1e-5, atol=1e-6)
    # ...and says so: a warning-level line (W) naming both providers.
    assert re.search(r"(?m)^.*\bW\b.*CUDA.*CPU", c.logs()), c.logs()
    docker("stop", "-t", "10", c.id, timeout=30)
    assert c.inspect()["State"]["ExitCode"] == 0
