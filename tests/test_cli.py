"""The ``azmlinfsrv`` command: the reference's flags, its defaults, its log lines."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator

import pytest
from conftest import ROOT, SCRIPTS, ServerHandle, launch

from server.cli import azmlinfsrv_main, load_settings, main

KEY = "0f8fad5b-d9cb-469f-a165-70867728950e"
_LISTENING = re.compile(r"Listening on http://([^\s]+):(\d+)")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in list(os.environ):
        if name.startswith(("SCOREHOST_", "AZUREML_", "AML_")) or name in (
            "SCORING_TIMEOUT_MS", "WORKER_COUNT", "WORKER_TIMEOUT", "HEALTH_PORT", "SEPERATE_HEALTH_ENDPOINT",
            "SERVER_VERSION_LOG_RESPONSE_ENABLED",
        ):  # fmt: skip
            monkeypatch.delenv(name)
    monkeypatch.chdir(str(tmp_path))


def test_console_script_is_declared() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["azmlinfsrv"] == "server.cli:azmlinfsrv_main"
    assert scripts["scorehost"] == "server.cli:main"


def test_reference_flags() -> None:
    loaded = load_settings(
        ["--entry_script", "score.py", "--model_dir", "models", "--port", "6000", "--health_port", "6001",
         "--worker_count", "2", "--appinsights_instrumentation_key", KEY, "--access_control_allow_origins", "a,b",
         "--rest"],
        "azmlinfsrv",
    )  # fmt: skip
    s = loaded.settings
    assert (s.entry_script, s.model_dir, s.port, s.health_port, s.workers) == ("score.py", "models", 6000, 6001, 2)
    assert s.app_insights_active() and s.cors_origins == ["a", "b"]
    assert (s.host, s.log_names) == ("0.0.0.0", "azmlinfsrv")  # the reference binds all interfaces
    assert loaded.warnings == []


def test_our_names_still_win_over_the_command_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREHOST_HOST", "127.0.0.1")
    s = load_settings(["--entry_script", "score.py"], "azmlinfsrv").settings
    assert (s.host, s.log_names) == ("127.0.0.1", "azmlinfsrv")
    assert load_settings(["--entry_script", "s.py", "--host", "::1"], "azmlinfsrv").settings.host == "::1"
    # `scorehost serve` keeps its own defaults
    s = load_settings(["--entry_script", "score.py"]).settings
    assert (s.host, s.log_names) == ("127.0.0.1", "scorehost")


def test_missing_model_dir_is_a_warning_as_in_the_reference() -> None:
    warnings = load_settings(["--entry_script", "score.py"], "azmlinfsrv").warnings
    assert warnings == [
        "The environment variable 'AZUREML_MODEL_DIR' has not been set. "
        "Use the --model_dir command line argument to set it."
    ]


def test_bad_flags_exit_1_with_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        azmlinfsrv_main(["--no_such_flag"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "unrecognized arguments: --no_such_flag" in err and "--entry_script" in err
    # scorehost serve keeps argparse's usual exit 2
    with pytest.raises(SystemExit) as info:
        main(["serve", "--no_such_flag"])
    assert info.value.code == 2


def test_invalid_setting_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert azmlinfsrv_main(["--entry_script", "s.py", "--worker_count", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid setting workers" in err[0]


# --- a real server started as azmlinfsrv --------------------------------------------
def _launch(args: list[str], env: dict[str, str]) -> ServerHandle:
    code = "import sys; from server.cli import azmlinfsrv_main; sys.exit(azmlinfsrv_main())"
    return launch(args, {"SCOREHOST_HOST": "127.0.0.1", "SCOREHOST_SHUTDOWN_DELAY_S": "0", **env},
                  command=[sys.executable, "-c", code])  # fmt: skip


@pytest.fixture
def azmlinfsrv() -> Iterator[object]:
    handles: list[ServerHandle] = []

    def start(script: str, *args: str, **env: str) -> ServerHandle:
        handle = _launch(["--entry_script", str(SCRIPTS / script), "--port", "0", *args], env)
        handles.append(handle)
        handle.wait_ready()
        return handle

    yield start
    for handle in handles:
        handle.stop()


_REFERENCE_LINE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [DIWEC] \[\d+\] "


@pytest.mark.slow
def test_azmlinfsrv_logs_as_the_reference(azmlinfsrv) -> None:  # type: ignore[no-untyped-def]
    server = azmlinfsrv("printer.py", SERVER_VERSION_LOG_RESPONSE_ENABLED="true")
    with server.client() as client:
        assert client.post("/score", content=b'{"a": 1}').status_code == 200
        assert client.get("/").text == "Healthy"
    # the per-request line exactly as the reference writes it: logger azmlinfsrv, no request id
    line = server.wait_for_log(r"azmlinfsrv - POST /score 200 ")
    assert re.fullmatch(_REFERENCE_LINE + r"azmlinfsrv - POST /score 200 \d+\.\d{3}ms \d+", line), line
    assert re.fullmatch(_REFERENCE_LINE + r"azmlinfsrv - Listening on http://127\.0\.0\.1:\d+",
                        server.wait_for_log("Listening on")), server.log  # fmt: skip
    assert "Server Settings" in server.log
    assert "azmlinfsrv - The environment variable 'AZUREML_MODEL_DIR' has not been set." in server.log
    own = [line for line in server.lines if f" [{server.proc.pid}] " in line]  # the HTTP process's lines
    assert own and not [line for line in own if " scorehost" in line.split(" - ")[0] or "[rid " in line], own


@pytest.mark.slow
def test_azmlinfsrv_worker_lines_use_the_reference_names(azmlinfsrv) -> None:  # type: ignore[no-untyped-def]
    server = azmlinfsrv("printer.py")
    with server.client() as client:
        assert client.post("/score", content=b"hello").status_code == 200
    line = server.wait_for_log(r"azmlinfsrv\.print - scoring hello", timeout=5)
    assert re.fullmatch(_REFERENCE_LINE + r"azmlinfsrv\.print - scoring hello", line), line
    assert re.search(r"azmlinfsrv\.user_script - ", server.log)


@pytest.mark.slow
def test_azmlinfsrv_busy_port(azmlinfsrv) -> None:  # type: ignore[no-untyped-def]
    first = azmlinfsrv("echo.py")
    port = first.url.rsplit(":", 1)[1]
    code = "import sys; from server.cli import azmlinfsrv_main; sys.exit(azmlinfsrv_main())"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SCOREHOST_", "AZUREML_", "AML_"))}
    env["SCOREHOST_HOST"] = "127.0.0.1"
    done = subprocess.run(
        [sys.executable, "-c", code, "--entry_script", str(SCRIPTS / "echo.py"), "--port", port],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 3
    lines = [line for line in done.stdout.splitlines() if " E [" in line]
    assert len(lines) == 1 and "azmlinfsrv - Cannot listen on" in lines[0] and "already in use" in lines[0]
