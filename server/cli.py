"""Command line: ``scorehost serve`` (default), ``scorehost probe``, ``scorehost k8s``,
``scorehost migrate`` (managed online endpoint YAML from a v1 deployment configuration),
``scorehost keys`` / ``scorehost token`` (key auth's keys file, a token; :mod:`server.keys`), and
``azmlinfsrv``, the drop-in for the reference server's command.

Flags only override settings that were given; every default lives in
:class:`server.settings.Settings`. The reference server's flags (``--entry_script``,
``--model_dir``, ``--port``, ``--health_port``, ``--worker_count``,
``--appinsights_instrumentation_key``, ``--access_control_allow_origins``,
``--config_file``) are accepted by both commands so existing launch scripts work.

Configuration files are read here, before the settings object is built (it does no
I/O): ``--config_file`` / ``AZUREML_CONFIG_FILE``, else ``config.json`` in the app root
or next to the entry script, a flat JSON object of the reference's environment names.
Its values rank below flags and the environment, as in the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from server import __version__
from server.errors import SettingsError

if TYPE_CHECKING:
    from pydantic import ValidationError

    from server.settings import Settings

# NOTE: pydantic and the settings are imported lazily: `scorehost probe` is the images'
# HEALTHCHECK and runs every few seconds, so its start-up cost matters.
PREFIX = "SCOREHOST_"
CONFIG_FILE = "config.json"

# flag -> settings field
_FLAGS: dict[str, tuple[str, str]] = {
    "--entry_script": ("entry_script", "path of score.py (AZUREML_ENTRY_SCRIPT)"),
    "--model_dir": ("model_dir", "model folder (AZUREML_MODEL_DIR)"),
    "--app_root": ("app_root", "app root put on sys.path (AML_APP_ROOT)"),
    "--host": ("host", "address to bind (default 127.0.0.1; 0.0.0.0 for azmlinfsrv)"),
    "--port": ("port", "port (default 5001)"),
    "--health_port": ("health_port", "probe port when SEPERATE_HEALTH_ENDPOINT=true (default 5000)"),
    "--worker_count": ("workers", "worker processes (WORKER_COUNT)"),
    "--http_processes": ("http_processes", "HTTP front processes sharing the port (default 1)"),
    "--max_concurrent_requests": ("max_concurrent_requests", "scoring calls in flight"),
    "--max_queue_length": ("max_queue_length", "requests that may wait for a slot"),
    "--max_queue_wait_ms": ("max_queue_wait_ms", "longest wait for a slot"),
    "--scoring_timeout_ms": ("scoring_timeout_ms", "run() deadline (SCORING_TIMEOUT_MS)"),
    "--access_control_allow_origins": ("cors_origins", "CORS origins, comma-separated"),
    "--config_file": ("config_file", "JSON config file of Azure ML names (AZUREML_CONFIG_FILE)"),
    "--appinsights_instrumentation_key": ("app_insights_key", "App Insights key, passed to the script"),
    "--log_level": ("log_level", "debug, info, warning or error"),
    "--log_format": ("log_format", "text or json"),
}

# The keys the reference reads from a config file (its settings' aliases), and the field each sets.
FILE_KEYS: dict[str, str] = {
    "AZUREML_ENTRY_SCRIPT": "entry_script",
    "AZUREML_MODEL_DIR": "model_dir",
    "AZUREML_SOURCE_DIRECTORY": "source_directory",
    "SERVICE_NAME": "service_name",
    "SERVICE_VERSION": "service_version",
    "SERVICE_PATH_PREFIX": "service_path_prefix",
    "SCORING_TIMEOUT_MS": "scoring_timeout_ms",
    "AZUREML_LOG_LEVEL": "log_level",
}
# Read from a config file by the reference, with no effect in scorehost (App Insights, debugger).
REFERENCE_ONLY_FILE_KEYS = frozenset(
    {"WORKSPACE_NAME", "HOSTNAME", "APP_INSIGHTS_LOG_RESPONSE_ENABLED", "AZUREML_DEBUG_PORT"}
)

# What each command changes in the defaults (below flags, environment and config file).
COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {
    "scorehost": {},
    # The reference binds 0.0.0.0 and has no host flag; Dockerfiles that run it rely on that.
    "azmlinfsrv": {"host": "0.0.0.0", "log_names": "azmlinfsrv"},
}


@dataclass
class Loaded:
    settings: Settings
    warnings: list[str] = field(default_factory=list)


class _ReferenceParser(argparse.ArgumentParser):
    """azmlinfsrv's argument errors: the message, the full help, exit 1 (the reference's)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        print(file=sys.stderr)
        self.print_help(sys.stderr)
        raise SystemExit(1)


def _serve_parser(command: str = "scorehost") -> argparse.ArgumentParser:
    reference = command == "azmlinfsrv"
    cls = _ReferenceParser if reference else argparse.ArgumentParser
    parser = cls(
        prog="azmlinfsrv" if reference else "scorehost serve",
        description=(
            "scorehost, run as a drop-in for the Azure ML inference server (azmlinfsrv)."
            if reference
            else "Serve an Azure ML entry script (init()/run()) or a folder of ONNX models."
        ),
        argument_default=argparse.SUPPRESS,
    )
    for flag, (dest, text) in _FLAGS.items():
        aliases = [flag]
        if "_" in flag:
            aliases.append(flag.replace("_", "-"))
        if flag == "--worker_count":
            aliases.append("--workers")
        parser.add_argument(*aliases, dest=dest, help=text)
    # The reference's hidden --rest sets an environment variable nothing reads.
    parser.add_argument("--rest", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=f"scorehost {__version__}")
    return parser


# --- config file --------------------------------------------------------------
def _usable(path: str) -> bool:
    """The reference's test: the file exists and is not empty."""
    return os.path.isfile(path) and os.path.getsize(path) > 0


def find_config_file(explicit: str | None, from_env: str | None, app_root: str, entry_script: str | None) -> str | None:
    """The config file to read: ``--config_file`` (must exist), ``AZUREML_CONFIG_FILE`` (if it
    exists), then ``config.json`` in the app root, then next to the entry script."""
    if explicit is not None:
        path = os.path.abspath(explicit)
        if not os.path.isfile(path):
            raise SettingsError(f"config file not found: {path} (--config_file)")
        return path if _usable(path) else None
    if from_env and _usable(from_env):
        return os.path.abspath(from_env)
    roots = [app_root]
    if entry_script:
        roots.append(os.path.dirname(os.path.realpath(entry_script)))
    for root in roots:
        path = os.path.join(root, CONFIG_FILE)
        if _usable(path):
            return path
    return None


def read_config_file(path: str) -> tuple[dict[str, Any], list[str]]:
    """The settings a config file sets (by field name), and at most one warning line
    naming the keys that were ignored."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"cannot read config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: expected a JSON object of setting names, got {type(data).__name__}")
    values: dict[str, Any] = {}
    unknown: list[str] = []
    unused: list[str] = []
    for key, value in data.items():
        name = FILE_KEYS.get(key)
        if name is None:
            (unused if key in REFERENCE_ONLY_FILE_KEYS else unknown).append(key)
            continue
        if value is None:
            continue
        if name != "scoring_timeout_ms" and isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)  # e.g. "SERVICE_VERSION": 2
        values[name] = value
    parts = []
    if unknown:
        parts.append(f"unknown keys {unknown} (a config file may set {sorted(FILE_KEYS)})")
    if unused:
        parts.append(f"keys without effect in scorehost {unused}")
    warnings = [f"Config file {path}: ignoring " + "; ".join(parts)] if parts else []
    return values, warnings


# --- settings -----------------------------------------------------------------
def parse_args(argv: list[str], command: str = "scorehost") -> dict[str, Any]:
    """Flags as settings fields (only those given)."""
    args = vars(_serve_parser(command).parse_args(argv))
    args.pop("rest", None)
    if "app_insights_key" in args:  # the reference: giving a key switches App Insights on
        args["app_insights_enabled"] = True
    return args


def load_settings(argv: list[str], command: str = "scorehost") -> Loaded:
    """Flags, environment and config file -> settings. Raises :class:`SettingsError` with one line."""
    from pydantic import ValidationError

    from server.cpus import available_cpus
    from server.settings import Settings

    args = parse_args(argv, command)
    # Measured once, here: the default concurrency (SCOREHOST_CPUS overrides it).
    defaults = {**COMMAND_DEFAULTS[command], "cpus": available_cpus()}
    explicit = args.pop("config_file", None)
    file_values: dict[str, Any] = {}
    warnings: list[str] = []
    path: str | None = None
    try:
        first = Settings.build(defaults, **args)
        cwd = os.getcwd()
        if explicit is None and first.config_file and not _usable(first.config_file):
            warnings.append(
                f"AZUREML_CONFIG_FILE={first.config_file}: not found or empty; "
                "looking for config.json in the app root and next to the entry script"
            )
        path = find_config_file(
            explicit, first.config_file, first.resolved_app_root(cwd), first.resolved_entry_script(cwd)
        )
        if path is not None:
            file_values, notes = read_config_file(path)
            warnings.extend(notes)
        settings = Settings.build({**defaults, **file_values}, **args, config_file=path)
    except ValidationError as exc:
        raise SettingsError(describe_error(exc, file_values, path)) from exc
    if command == "azmlinfsrv" and settings.model_dir is None:
        warnings.append(
            "The environment variable 'AZUREML_MODEL_DIR' has not been set. "
            "Use the --model_dir command line argument to set it."
        )
    return Loaded(settings, warnings)


def settings_from_args(argv: list[str]) -> Settings:
    return load_settings(argv).settings


def describe_error(exc: ValidationError, file_values: Mapping[str, Any] | None = None, path: str | None = None) -> str:
    """One line naming the setting, its environment variable and what was wrong."""
    from server.settings import Settings

    err = exc.errors()[0]
    loc = str(err["loc"][0]) if err["loc"] else ""
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:
        return f"scorehost: invalid settings: {msg}"
    field, names = loc, [f"{PREFIX}{loc.upper()}"]
    for name, info in Settings.model_fields.items():
        choices = getattr(info.validation_alias, "choices", [])
        if name == loc or any(str(c).lower() == loc.lower() for c in choices):
            field, names = name, [str(c) for c in choices]
            break
    flag = next((f for f, (name, _) in _FLAGS.items() if name == field), None)
    where = ", ".join(names) + (f" / {flag}" if flag else "")
    got = err.get("input")
    source = ""
    if file_values and field in file_values and file_values[field] == got:
        source = f" in config file {path}"
    return f"scorehost: invalid setting {field} ({where}): {msg} (got {got!r}{source})"


def probe(argv: list[str]) -> int:
    """Exit 0 when the endpoint answers 200: the images' HEALTHCHECK."""
    parser = argparse.ArgumentParser(prog="scorehost probe")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get(f"{PREFIX}PORT", "5001")))
    parser.add_argument("--path", default="/health/live")
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument(
        "--tls", action=argparse.BooleanOptionalAction, default=bool(os.environ.get(f"{PREFIX}SSL_CERTFILE")),
        help="HTTPS, certificate not verified (default: on when SCOREHOST_SSL_CERTFILE is set)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    url = f"{'https' if args.tls else 'http'}://{args.host}:{args.port}{args.path}"
    context = None
    if args.tls:  # a liveness check of our own port: nothing secret is sent, so no verification
        import ssl

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=args.timeout, context=context) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"probe {url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith("-") else "serve"
    rest = argv[1:] if argv and not argv[0].startswith("-") else argv
    if command == "probe":
        return probe(rest)
    if command in ("keys", "token"):
        from server import keys

        return keys.keys_main(rest) if command == "keys" else keys.token_main(rest)
    if command == "k8s":
        from server.deploy import k8s

        result: Any = k8s.main(rest)
        return int(result)
    if command == "migrate":
        from server.deploy import migrate

        return migrate.main(rest)
    if command != "serve":
        commands = "serve, probe, k8s, migrate, keys or token"
        print(f"scorehost: unknown command {command!r} (use {commands})", file=sys.stderr)
        return 2
    return _serve(rest, "scorehost")


def azmlinfsrv_main(argv: list[str] | None = None) -> int:
    """``azmlinfsrv``: the reference's command line, served by scorehost, logging under the
    reference's logger names, bound to 0.0.0.0 unless told otherwise."""
    return _serve(list(sys.argv[1:] if argv is None else argv), "azmlinfsrv")


def _serve(argv: list[str], command: str) -> int:
    try:
        loaded = load_settings(argv, command)
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if loaded.settings.http_processes > 1:
        from server.http.fronts import serve_fronts

        return serve_fronts(loaded.settings, warnings=loaded.warnings)
    from server.http.server import serve

    return serve(loaded.settings, warnings=loaded.warnings)
