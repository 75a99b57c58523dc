"""The environment a worker process (and so the user's script) runs in.

The reference's launcher writes its resolved configuration into ``os.environ`` before
gunicorn forks the workers, and scripts read it back (``os.getenv("AZUREML_MODEL_DIR")``
in ``init()`` is the canonical example). :func:`worker_environment` computes the same
variables from the settings, on top of the HTTP process's own environment:

* ``AZUREML_ENTRY_SCRIPT``: the script, absolute;
* ``AML_APP_ROOT``: the app root, absolute (the working directory by default);
* ``AZUREML_MODEL_DIR``: only when a model directory was given, exactly as given (the
  reference does not make it absolute);
* ``AML_APP_INSIGHTS_ENABLED``: ``true`` or ``false``, decided as the reference decides it
  (switched on and a key shaped like a UUID); ``AML_APP_INSIGHTS_KEY`` only when set;
* ``WORKER_COUNT``, ``SERVER_PORT`` (when not 0), ``HEALTH_PORT``, ``AML_CORS_ORIGINS``
  (when set) and ``AZUREML_CONFIG_FILE`` (when a config file is in use), as the
  reference's launcher leaves them.

Left out on purpose: the reference's ``TRANSPORT_PROTOCOL=grpc`` (read by nothing) and
``HTTP_X_MS_SERVER_VERSION`` (its own header value). Secrets never reach user code: the
environment names of every secret setting (``SCOREHOST_API_KEY`` ...) are dropped from the
copy, except the App Insights key, which the reference hands to scripts.

Pure: no I/O, no ``os.environ``; the caller passes the base environment and the working
directory.
"""

from __future__ import annotations

from collections.abc import Mapping

from server.settings import SECRET_FIELDS, Settings


def secret_env_names() -> frozenset[str]:
    """Every environment name (upper case) that can carry a secret setting."""
    names: set[str] = set()
    for field in SECRET_FIELDS:
        info = Settings.model_fields.get(field)
        choices = getattr(info.validation_alias, "choices", []) if info is not None else []
        names.update(str(c).upper() for c in choices)
    return frozenset(names)


def worker_environment(
    settings: Settings,
    base: Mapping[str, str],
    cwd: str,
    *,
    port: int | None = None,
    health_port: int | None = None,
) -> dict[str, str]:
    """The environment of a worker process: ``base`` without secrets, plus what the
    reference's launcher exports (see the module docstring). ``port`` / ``health_port``:
    the ports actually bound, when the settings say 0 (pick one)."""
    secrets = secret_env_names()
    env = {k: v for k, v in base.items() if k.upper() not in secrets}

    env["AML_APP_ROOT"] = settings.resolved_app_root(cwd)
    entry = settings.resolved_entry_script(cwd)
    if entry is not None:
        env["AZUREML_ENTRY_SCRIPT"] = entry
    else:
        env.pop("AZUREML_ENTRY_SCRIPT", None)
    if settings.model_dir is not None:
        env["AZUREML_MODEL_DIR"] = settings.model_dir
    else:
        env.pop("AZUREML_MODEL_DIR", None)

    env["AML_APP_INSIGHTS_ENABLED"] = "true" if settings.app_insights_active() else "false"
    if settings.app_insights_key is not None:
        env["AML_APP_INSIGHTS_KEY"] = settings.app_insights_key.get_secret_value()

    env["WORKER_COUNT"] = str(settings.workers)
    server_port = port or settings.port
    if server_port:
        env["SERVER_PORT"] = str(server_port)
    health = (health_port or settings.health_port) if settings.separate_health_endpoint else server_port
    if health:
        env["HEALTH_PORT"] = str(health)
    if settings.cors_origins:
        env["AML_CORS_ORIGINS"] = ",".join(settings.cors_origins)
    if settings.config_file:
        env["AZUREML_CONFIG_FILE"] = settings.config_file
    return env
