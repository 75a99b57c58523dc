"""The script's environment: what the reference's launcher exports, and no secrets."""

from __future__ import annotations

import pytest

from server.entry.environment import secret_env_names, worker_environment
from server.settings import Settings

KEY = "0f8fad5b-d9cb-469f-a165-70867728950e"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("SCOREHOST_", "AZUREML_", "AML_")) or name in (
            "SCORING_TIMEOUT_MS", "WORKER_COUNT", "WORKER_TIMEOUT", "HEALTH_PORT", "SEPERATE_HEALTH_ENDPOINT",
        ):  # fmt: skip
            monkeypatch.delenv(name)


def test_entry_script_absolute_app_root_and_no_model_dir() -> None:
    s = Settings(entry_script="score.py")
    env = worker_environment(s, {"PATH": "/bin", "AZUREML_MODEL_DIR": "stale"}, "/srv/app")
    assert env["AZUREML_ENTRY_SCRIPT"] == "/srv/app/score.py"
    assert env["AML_APP_ROOT"] == "/srv/app"
    assert "AZUREML_MODEL_DIR" not in env  # only when given
    assert env["PATH"] == "/bin"
    assert env["AML_APP_INSIGHTS_ENABLED"] == "false" and "AML_APP_INSIGHTS_KEY" not in env
    assert env["WORKER_COUNT"] == "1"
    assert env["SERVER_PORT"] == env["HEALTH_PORT"] == "5001"


def test_app_root_and_model_dir_as_given() -> None:
    s = Settings(entry_script="/abs/score.py", app_root="rel/app", model_dir="./models/does-not-exist")
    env = worker_environment(s, {}, "/cwd")
    assert env["AZUREML_ENTRY_SCRIPT"] == "/abs/score.py"
    assert env["AML_APP_ROOT"] == "/cwd/rel/app"
    assert env["AZUREML_MODEL_DIR"] == "./models/does-not-exist"  # not made absolute, not checked


def test_base_values_are_replaced_by_resolved_ones() -> None:
    s = Settings(entry_script="score.py", app_root="/app")
    env = worker_environment(s, {"AZUREML_ENTRY_SCRIPT": "score.py", "AML_APP_ROOT": "."}, "/elsewhere")
    assert (env["AZUREML_ENTRY_SCRIPT"], env["AML_APP_ROOT"]) == ("/app/score.py", "/app")


@pytest.mark.parametrize(
    ("enabled", "key", "expected"),
    [
        (None, None, "false"),
        ("true", None, "false"),  # no key: off
        ("true", "not-a-uuid", "false"),  # the reference's check: a UUID
        ("false", KEY, "false"),
        ("true", KEY, "true"),
        ("TRUE", KEY.upper(), "true"),
        ("banana", KEY, "false"),
    ],
)
def test_app_insights_normalised(
    monkeypatch: pytest.MonkeyPatch, enabled: str | None, key: str | None, expected: str
) -> None:
    if enabled is not None:
        monkeypatch.setenv("AML_APP_INSIGHTS_ENABLED", enabled)
    if key is not None:
        monkeypatch.setenv("AML_APP_INSIGHTS_KEY", key)
    base = {"AML_APP_INSIGHTS_ENABLED": enabled} if enabled is not None else {}
    env = worker_environment(Settings(entry_script="s.py"), base, "/app")
    assert env["AML_APP_INSIGHTS_ENABLED"] == expected
    if key is None:
        assert "AML_APP_INSIGHTS_KEY" not in env
    else:
        assert env["AML_APP_INSIGHTS_KEY"] == key


def test_the_flag_key_switches_app_insights_on() -> None:
    from server.cli import settings_from_args

    s = settings_from_args(["--entry_script", "s.py", "--appinsights_instrumentation_key", KEY])
    env = worker_environment(s, {}, "/app")
    assert (env["AML_APP_INSIGHTS_ENABLED"], env["AML_APP_INSIGHTS_KEY"]) == ("true", KEY)


def test_secrets_never_reach_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREHOST_API_KEY", "s3cret")
    s = Settings(entry_script="s.py")
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret" == s.primary_key.get_secret_value()  # type: ignore[union-attr]
    assert "s3cret" not in repr(s)
    base = {"SCOREHOST_API_KEY": "s3cret", "scorehost_api_key": "s3cret", "HOME": "/root"}
    env = worker_environment(s, base, "/app")
    assert "s3cret" not in env.values()
    assert env["HOME"] == "/root"
    assert "SCOREHOST_API_KEY" in secret_env_names()


def test_ports_cors_config_file_and_health_port() -> None:
    s = Settings(
        entry_script="s.py", port=0, separate_health_endpoint=True, health_port=0, workers=2,
        max_concurrent_requests=2, cors_origins="https://a,https://b", config_file="/app/config.json",
    )  # fmt: skip
    env = worker_environment(s, {}, "/app", port=6001, health_port=6002)
    assert (env["SERVER_PORT"], env["HEALTH_PORT"], env["WORKER_COUNT"]) == ("6001", "6002", "2")
    assert env["AML_CORS_ORIGINS"] == "https://a,https://b"
    assert env["AZUREML_CONFIG_FILE"] == "/app/config.json"
    assert "SERVER_PORT" not in worker_environment(s, {}, "/app")  # port 0 and none bound yet


def test_pure_does_not_touch_its_input() -> None:
    base = {"SCOREHOST_API_KEY": "x", "AZUREML_MODEL_DIR": "m"}
    worker_environment(Settings(entry_script="s.py"), base, "/app")
    assert base == {"SCOREHOST_API_KEY": "x", "AZUREML_MODEL_DIR": "m"}


@pytest.mark.slow
def test_a_live_script_sees_the_reference_environment(start_server) -> None:  # type: ignore[no-untyped-def]
    from conftest import SCRIPTS

    server = start_server(
        None, AML_APP_ROOT=str(SCRIPTS), AZUREML_ENTRY_SCRIPT="env_dump.py", AZUREML_MODEL_DIR="no/such/models",
        AML_APP_INSIGHTS_ENABLED="True", SCOREHOST_API_KEY="k", WORKER_COUNT="1",
    )  # fmt: skip
    with server.client() as c:
        env = c.post("/score", content=b"{}", headers={"Authorization": "Bearer k"}).json()["environ"]
    assert env["AZUREML_ENTRY_SCRIPT"] == str(SCRIPTS / "env_dump.py")
    assert env["AML_APP_ROOT"] == str(SCRIPTS)
    assert env["AZUREML_MODEL_DIR"] == "no/such/models"
    assert env["AML_APP_INSIGHTS_ENABLED"] == "false" and "AML_APP_INSIGHTS_KEY" not in env
    assert env["SERVER_PORT"] == server.url.rsplit(":", 1)[1] and env["WORKER_COUNT"] == "1"
    assert "SCOREHOST_API_KEY" not in env
    assert "Model directory no/such/models does not exist" in server.log  # a warning, not an error
