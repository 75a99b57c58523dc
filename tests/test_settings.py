"""The settings object: precedence, Azure ML names, validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from server.cli import describe_error, settings_from_args
from server.settings import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("SCOREHOST_", "AZUREML_", "AML_")) or name in (
            "SCORING_TIMEOUT_MS",
            "WORKER_COUNT",
            "SERVICE_NAME",
            "MAX_REQUEST_WAIT_TIME",
        ):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = Settings()
    assert (s.host, s.port, s.workers, s.scoring_timeout_ms, s.max_queue_wait_ms) == ("127.0.0.1", 5001, 1, 60000, 500)
    assert s.max_concurrent_requests >= 1 and s.service_name == "ML service"


def test_azure_names_and_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORING_TIMEOUT_MS", "1234")
    monkeypatch.setenv("WORKER_COUNT", "2")
    monkeypatch.setenv("AML_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("AZUREML_ENTRY_SCRIPT", "score.py")
    monkeypatch.setenv("AML_APP_ROOT", "/srv/app")
    monkeypatch.setenv("MAX_REQUEST_WAIT_TIME", "250")
    monkeypatch.setenv("PORT", "9")  # a stray generic name is not ours
    s = Settings()
    assert (s.scoring_timeout_ms, s.workers, s.max_queue_wait_ms, s.port) == (1234, 2, 250, 5001)
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.resolved_entry_script("/cwd") == "/srv/app/score.py"
    monkeypatch.setenv("SCOREHOST_SCORING_TIMEOUT_MS", "99")  # ours beats Azure's
    assert Settings().scoring_timeout_ms == 99
    assert settings_from_args(["--scoring_timeout_ms", "5", "--worker_count", "1"]).scoring_timeout_ms == 5


def test_reference_flags() -> None:
    s = settings_from_args(
        [
            "--entry_script",
            "s.py",
            "--model_dir",
            "m",
            "--port",
            "6000",
            "--worker_count",
            "2",
            "--access_control_allow_origins",
            "x,y",
        ]
    )
    assert (s.entry_script, s.model_dir, s.port, s.workers, s.cors_origins) == ("s.py", "m", 6000, 2, ["x", "y"])


def test_invalid_values_name_the_setting() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(port=70000)
    assert "invalid setting port (SCOREHOST_PORT / --port)" in describe_error(info.value)
    with pytest.raises(ValidationError) as info:
        Settings(workers=4, max_concurrent_requests=2)
    assert "must be at least workers" in describe_error(info.value)
    with pytest.raises(ValidationError):
        Settings(device="tpu")


def test_slots_spread_over_workers() -> None:
    s = Settings(workers=3, max_concurrent_requests=8)
    assert [s.slots_for(i) for i in range(3)] == [3, 3, 2]


def test_frozen() -> None:
    with pytest.raises(ValidationError):
        Settings().port = 1  # type: ignore[misc]


def test_shutdown_delay_defaults_to_zero() -> None:
    assert Settings().shutdown_delay_s == 0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (60_000, 10_000)),
        ({"WORKER_TIMEOUT": "300"}, (60_000, 240_000)),  # a stuck worker goes 300 s after the call began
        ({"WORKER_TIMEOUT": "30"}, (30_000, 0)),  # shorter than the deadline: the deadline follows
        ({"WORKER_TIMEOUT": "300", "SCOREHOST_WEDGED_AFTER_MS": "5"}, (60_000, 5)),  # ours wins
        ({"WORKER_TIMEOUT": "0"}, (60_000, 365 * 86_400_000)),  # gunicorn's 0: never
    ],
)
def test_worker_timeout_maps_onto_the_wedge_rule(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: tuple[int, int]
) -> None:
    monkeypatch.delenv("SCOREHOST_WEDGED_AFTER_MS", raising=False)
    monkeypatch.delenv("WORKER_TIMEOUT", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert (s.scoring_timeout_ms, s.wedged_after_ms) == expected
    again = Settings.model_validate_json(s.model_dump_json())  # what a worker rebuilds
    assert (again.scoring_timeout_ms, again.wedged_after_ms) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("True", True), ("1", True), ("false", False), ("no", False), ("banana", False)],
)
def test_azure_switches_are_lenient(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    for name in ("SEPERATE_HEALTH_ENDPOINT", "AML_APP_INSIGHTS_ENABLED"):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SERVER_VERSION_LOG_RESPONSE_ENABLED", value)
    monkeypatch.setenv("HEALTH_PORT", "5002")
    s = Settings()
    assert s.separate_health_endpoint is s.app_insights_enabled is s.server_version_header is expected
    assert s.health_port == 5002


def test_server_version_header_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVER_VERSION_LOG_RESPONSE_ENABLED", raising=False)
    assert Settings().server_version_header is True


def test_health_port_must_differ_from_port() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(separate_health_endpoint=True, port=5000, health_port=5000)
    assert "must differ from port" in describe_error(info.value)
    assert Settings(separate_health_endpoint=False, port=5000, health_port=5000).port == 5000
    assert Settings(separate_health_endpoint=True, port=0, health_port=0).health_port == 0


def test_azure_log_level_names(monkeypatch: pytest.MonkeyPatch) -> None:
    for value, expected in (("INFO", "info"), ("WARN", "warning"), ("CRITICAL", "error"), ("Debug", "debug")):
        monkeypatch.setenv("AZUREML_LOG_LEVEL", value)
        assert Settings().log_level == expected


def test_app_insights_key_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AML_APP_INSIGHTS_KEY", "0f8fad5b-d9cb-469f-a165-70867728950e")
    s = Settings()
    assert "0f8fad5b" not in repr(s) and "0f8fad5b" not in s.model_dump_json()
