"""config.json and logging.json: where they are found, what they may set, their priority."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest
from conftest import SCRIPTS

from server import log
from server.cli import find_config_file, load_settings, read_config_file
from server.errors import LoggingFileError, SettingsError
from server.settings import Settings


def written(stream: io.StringIO) -> str:
    """What reached the stream once our handler wrote the lines it holds."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, log.DeferredFlushHandler):
            handler.flush()
    return stream.getvalue()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("SCOREHOST_", "AZUREML_", "AML_")) or name in (
            "SCORING_TIMEOUT_MS", "WORKER_COUNT", "SERVICE_NAME", "SERVICE_VERSION", "WORKER_TIMEOUT",
        ):  # fmt: skip
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no config.json of the checkout's


def _write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# --- finding -------------------------------------------------------------------
def test_found_in_app_root_then_next_to_the_entry_script(tmp_path: Path) -> None:
    app, scripts = tmp_path / "app", tmp_path / "scripts"
    app.mkdir()
    entry = scripts / "score.py"
    _write(scripts / "config.json", {"SERVICE_NAME": "beside"})
    assert find_config_file(None, None, str(app), str(entry)) == str(scripts / "config.json")
    _write(app / "config.json", {"SERVICE_NAME": "root"})
    assert find_config_file(None, None, str(app), str(entry)) == str(app / "config.json")
    assert find_config_file(None, None, str(tmp_path / "none"), None) is None


def test_explicit_and_environment_files(tmp_path: Path) -> None:
    other = _write(tmp_path / "elsewhere" / "c.json", {"SERVICE_NAME": "x"})
    _write(tmp_path / "config.json", {"SERVICE_NAME": "root"})
    assert find_config_file(str(other), None, str(tmp_path), None) == str(other)
    assert find_config_file(None, str(other), str(tmp_path), None) == str(other)
    # AZUREML_CONFIG_FILE that is missing or empty: the default places, as the reference
    assert find_config_file(None, str(tmp_path / "missing.json"), str(tmp_path), None) == str(tmp_path / "config.json")
    empty = tmp_path / "empty.json"
    empty.write_text("")
    assert find_config_file(None, str(empty), str(tmp_path), None) == str(tmp_path / "config.json")
    assert find_config_file(str(empty), None, str(tmp_path), None) is None
    with pytest.raises(SettingsError, match="config file not found"):
        find_config_file(str(tmp_path / "missing.json"), None, str(tmp_path), None)


# --- reading -------------------------------------------------------------------
def test_reads_the_reference_names_and_warns_once_about_the_rest(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "config.json",
        {
            "AZUREML_ENTRY_SCRIPT": "score.py", "SCORING_TIMEOUT_MS": 1234, "SERVICE_VERSION": 2,
            "AZUREML_LOG_LEVEL": "DEBUG", "SERVICE_PATH_PREFIX": None, "WORKSPACE_NAME": "ws",
            "NOT_A_SETTING": 1, "WORKER_COUNT": 4,
        },
    )  # fmt: skip
    values, warnings = read_config_file(str(path))
    assert values == {
        "entry_script": "score.py", "scoring_timeout_ms": 1234, "service_version": "2", "log_level": "DEBUG",
    }  # fmt: skip
    assert len(warnings) == 1
    assert "NOT_A_SETTING" in warnings[0] and "WORKER_COUNT" in warnings[0] and "WORKSPACE_NAME" in warnings[0]


@pytest.mark.parametrize(
    ("text", "message"), [("{nope", "cannot read config file"), ("[1, 2]", "expected a JSON object")]
)
def test_bad_files_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(SettingsError, match=message) as info:
        read_config_file(str(path))
    assert "\n" not in str(info.value)


# --- priority ------------------------------------------------------------------
def test_priority_flag_then_environment_then_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "config.json", {"SCORING_TIMEOUT_MS": 1000, "SERVICE_NAME": "from-file",
                                      "AZUREML_ENTRY_SCRIPT": "score.py"})  # fmt: skip
    loaded = load_settings([])
    s = loaded.settings
    assert (s.scoring_timeout_ms, s.service_name, s.entry_script) == (1000, "from-file", "score.py")
    assert s.config_file == str(tmp_path / "config.json")
    assert loaded.warnings == []
    monkeypatch.setenv("SCORING_TIMEOUT_MS", "2000")
    assert load_settings([]).settings.scoring_timeout_ms == 2000
    monkeypatch.setenv("SCOREHOST_SCORING_TIMEOUT_MS", "3000")
    assert load_settings([]).settings.scoring_timeout_ms == 3000
    assert load_settings(["--scoring_timeout_ms", "4000"]).settings.scoring_timeout_ms == 4000


def test_config_file_flag_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flagged = _write(tmp_path / "a" / "flag.json", {"SERVICE_NAME": "flag"})
    env_file = _write(tmp_path / "b" / "env.json", {"SERVICE_NAME": "env"})
    monkeypatch.setenv("AZUREML_CONFIG_FILE", str(env_file))
    assert load_settings([]).settings.service_name == "env"
    s = load_settings(["--config_file", str(flagged)]).settings
    assert (s.service_name, s.config_file) == ("flag", str(flagged))
    monkeypatch.setenv("AZUREML_CONFIG_FILE", str(tmp_path / "gone.json"))
    loaded = load_settings([])
    assert loaded.settings.config_file is None and loaded.settings.service_name == "ML service"
    assert any("gone.json" in w for w in loaded.warnings)
    with pytest.raises(SettingsError, match="config file not found"):
        load_settings(["--config_file", str(tmp_path / "gone.json")])


def test_invalid_value_in_the_file_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "config.json", {"SCORING_TIMEOUT_MS": "soon"})
    with pytest.raises(SettingsError) as info:
        load_settings([])
    message = str(info.value)
    assert "scoring_timeout_ms" in message and f"in config file {path}" in message


def test_settings_stay_pure() -> None:
    """Settings() alone never reads a config file; the CLI hands its values over."""
    s = Settings.build({"service_name": "low"}, service_name="high")
    assert s.service_name == "high"
    assert Settings.build({"service_name": "low"}).service_name == "low"
    assert Settings().service_name == "ML service"  # the build() values do not leak


# --- logging.json --------------------------------------------------------------
@pytest.fixture
def stream() -> io.StringIO:
    out = io.StringIO()
    yield out
    log.configure(stream=io.StringIO())  # back to the default naming, no logging.json
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, log.DeferredFlushHandler):
            root.removeHandler(handler)
    for name in ("t.cfg", "azmlinfsrv.print", "scorehost.print", "scorehost.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def test_logging_file_is_applied(tmp_path: Path, stream: io.StringIO) -> None:
    out = tmp_path / "user.log"
    _write(tmp_path / "logging.json", {
        "version": 1,
        "formatters": {"f": {"class": "azureml_inference_server_http.log_config.AMLLogFormatter",
                             "format": "USER %(name)s %(message)s"}},
        "filters": {"root_access": {"()": "azureml_inference_server_http.log_config.RootAccessFilter"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "f",
                              "filters": ["root_access"]}},
        "loggers": {"t.cfg": {"handlers": ["file"], "level": "INFO", "propagate": False}},
    })  # fmt: skip
    existing = logging.getLogger("t.existing")
    s = Settings(app_root=str(tmp_path))
    assert log.configure_from(s, stream=stream) == str(tmp_path / "logging.json")
    logging.getLogger("t.cfg").info("hello")
    logging.getLogger("t.cfg").info('"GET / HTTP/1.1" 200')  # the reference's probe filter
    existing.warning("still enabled")  # loggers that existed stay enabled
    for handler in logging.getLogger("t.cfg").handlers:
        handler.flush()
    assert out.read_text().splitlines() == ["USER t.cfg hello"]
    assert "still enabled" in written(stream)
    assert "Loaded logging config from" in written(stream)
    # with a user config, the access line goes through logging (its levels and handlers apply)
    logging.getLogger("scorehost.access").setLevel(logging.WARNING)
    log.AccessLog("text").write("POST", "/score", 200, 1.0, 2, "rid")
    assert "POST /score" not in written(stream)


def test_logging_file_next_to_the_entry_script(tmp_path: Path, stream: io.StringIO) -> None:
    _write(tmp_path / "s" / "logging.json", {"version": 1, "loggers": {"t.cfg": {"level": "ERROR"}}})
    s = Settings(app_root=str(tmp_path / "app"), entry_script=str(tmp_path / "s" / "score.py"))
    assert log.apply_logging_file(s) == str(tmp_path / "s" / "logging.json")
    assert logging.getLogger("t.cfg").level == logging.ERROR
    assert log.apply_logging_file(Settings(app_root=str(tmp_path / "none"))) is None


def test_bad_logging_file_raises_one_line(tmp_path: Path) -> None:
    (tmp_path / "logging.json").write_text(json.dumps({"version": 1, "handlers": {"h": {"class": "no.Such"}}}))
    with pytest.raises(LoggingFileError, match="cannot apply logging config"):
        log.apply_logging_file(Settings(app_root=str(tmp_path)))
    (tmp_path / "logging.json").write_text("{")
    with pytest.raises(LoggingFileError, match="cannot read logging config"):
        log.apply_logging_file(Settings(app_root=str(tmp_path)))


# --- real server ------------------------------------------------------------------
@pytest.mark.slow
def test_server_reads_config_json_from_the_app_root(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _write(tmp_path / "config.json", {
        "AZUREML_ENTRY_SCRIPT": str(SCRIPTS / "schema_run.py"), "SERVICE_NAME": "from-config",
        "SERVICE_VERSION": 7, "SCORING_TIMEOUT_MS": 4321, "UNKNOWN_KEY": True,
    })  # fmt: skip
    server = start_server(None, AML_APP_ROOT=str(tmp_path), SERVICE_VERSION="8")
    assert f"Config File: {tmp_path / 'config.json'}" in server.log
    assert "timeout 4321 ms" in server.log
    warnings = [line for line in server.lines if "ignoring" in line and "UNKNOWN_KEY" in line]
    assert len(warnings) == 1 and " W [" in warnings[0]
    with server.client() as client:
        info = client.get("/swagger.json").json()["info"]
        assert (info["title"], info["version"]) == ("from-config", "8")  # the environment wins


@pytest.mark.slow
def test_server_applies_logging_json(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _write(tmp_path / "logging.json", {
        "version": 1,
        "formatters": {"f": {"format": "CUSTOM|%(name)s|%(message)s"}},
        "handlers": {"h": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout", "formatter": "f"}},
        "loggers": {"scorehost.access": {"handlers": ["h"], "propagate": False, "level": "INFO"}},
    })  # fmt: skip
    server = start_server("echo.py", AML_APP_ROOT=str(tmp_path))
    assert f"Loaded logging config from {tmp_path / 'logging.json'}" in server.log
    with server.client() as client:
        assert client.post("/score", content=b"{}").status_code == 200
    server.wait_for_log(r"^CUSTOM\|scorehost\.access\|POST /score 200 ")


@pytest.mark.slow
def test_bad_config_json_exits_with_one_line(tmp_path: Path) -> None:
    from conftest import launch

    (tmp_path / "config.json").write_text("[]")
    handle = launch(env={"AML_APP_ROOT": str(tmp_path), "AZUREML_ENTRY_SCRIPT": str(SCRIPTS / "echo.py")},
                    wait_listening=False)  # fmt: skip
    assert handle.wait_exit(timeout=20) == 2
    lines = [line for line in handle.lines if line.strip()]
    assert len(lines) == 1 and "expected a JSON object" in lines[0], handle.log
