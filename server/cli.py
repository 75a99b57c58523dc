"""Command line: ``scorehost serve`` (default), ``scorehost probe``, ``scorehost k8s``.

Flags only override settings that were given; every default lives in
:class:`server.settings.Settings`. The reference server's flags
(``--entry_script``, ``--model_dir``, ``--port``, ``--worker_count``,
``--access_control_allow_origins``) are accepted so existing launch scripts work.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from server import __version__

if TYPE_CHECKING:
    from pydantic import ValidationError

    from server.settings import Settings

# NOTE: pydantic and the settings are imported lazily: `scorehost probe` is the images'
# HEALTHCHECK and runs every few seconds, so its start-up cost matters.
PREFIX = "SCOREHOST_"

# flag -> settings field
_FLAGS: dict[str, tuple[str, str]] = {
    "--entry_script": ("entry_script", "path of score.py (AZUREML_ENTRY_SCRIPT)"),
    "--model_dir": ("model_dir", "model folder (AZUREML_MODEL_DIR)"),
    "--app_root": ("app_root", "app root put on sys.path (AML_APP_ROOT)"),
    "--host": ("host", "address to bind (default 127.0.0.1)"),
    "--port": ("port", "port (default 5001)"),
    "--worker_count": ("workers", "worker processes (WORKER_COUNT)"),
    "--max_concurrent_requests": ("max_concurrent_requests", "scoring calls in flight"),
    "--max_queue_length": ("max_queue_length", "requests that may wait for a slot"),
    "--max_queue_wait_ms": ("max_queue_wait_ms", "longest wait for a slot"),
    "--scoring_timeout_ms": ("scoring_timeout_ms", "run() deadline (SCORING_TIMEOUT_MS)"),
    "--access_control_allow_origins": ("cors_origins", "CORS origins, comma-separated"),
    "--log_level": ("log_level", "debug, info, warning or error"),
    "--log_format": ("log_format", "text or json"),
}


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scorehost serve",
        description="Serve an Azure ML entry script (init()/run()) or a folder of ONNX models.",
        argument_default=argparse.SUPPRESS,
    )
    for flag, (field, text) in _FLAGS.items():
        aliases = [flag]
        if "_" in flag:
            aliases.append(flag.replace("_", "-"))
        if flag == "--worker_count":
            aliases.append("--workers")
        parser.add_argument(*aliases, dest=field, help=text)
    parser.add_argument("--version", action="version", version=f"scorehost {__version__}")
    return parser


def settings_from_args(argv: list[str]) -> Settings:
    from server.settings import Settings

    args = vars(_serve_parser().parse_args(argv))
    return Settings(**args)


def describe_error(exc: ValidationError) -> str:
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
    return f"scorehost: invalid setting {field} ({where}): {msg} (got {err.get('input')!r})"


def probe(argv: list[str]) -> int:
    """Exit 0 when the endpoint answers 200: the images' HEALTHCHECK."""
    parser = argparse.ArgumentParser(prog="scorehost probe")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get(f"{PREFIX}PORT", "5001")))
    parser.add_argument("--path", default="/health/live")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    url = f"http://{args.host}:{args.port}{args.path}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:
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
    if command == "k8s":
        from server.deploy import k8s

        result: Any = k8s.main(rest)
        return int(result)
    if command != "serve":
        print(f"scorehost: unknown command {command!r} (use serve, probe or k8s)", file=sys.stderr)
        return 2
    from pydantic import ValidationError

    try:
        settings = settings_from_args(rest)
    except ValidationError as exc:
        print(describe_error(exc), file=sys.stderr)
        return 2
    from server.http.server import serve

    return serve(settings)
