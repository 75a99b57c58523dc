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
                "SCORING_TIMEOUT_MS", "WORKER_COUNT", "SERVICE_NAME", "MAX_REQUEST_WAIT_TIME"):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = Settings()
    assert (s.host, s.port, s.workers, s.scoring_timeout_ms, s.max_queue_wait_ms) == ("127.0.0.1", 5001, 1, 60000,
                                                                                      500)
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
    s = settings_from_args(["--entry_script", "s.py", "--model_dir", "m", "--port", "6000", "--worker_count", "2",
                            "--access_control_allow_origins", "x,y"])
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
