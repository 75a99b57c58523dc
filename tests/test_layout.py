"""The layout is the architecture: the core knows no HTTP, and a worker never loads it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

SERVER = ROOT / "server"


@pytest.mark.slow
def test_a_live_worker_has_not_imported_uvicorn_or_starlette(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("modules_run.py")
    with server.client() as c:
        assert c.post("/score", content=b"").json() == []


@pytest.mark.parametrize(("where", "banned"), [("server/store/x.py", True), ("server/workers/x.py", True),
                                               ("server/http/x.py", False)])  # fmt: skip
def test_the_linter_bans_http_imports_outside_server_http(where: str, banned: bool) -> None:
    code = "import uvicorn\nfrom starlette.requests import Request\n\nx = (Request, uvicorn)\n"
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "TID251", "--stdin-filename", where, "-"],
                         input=code, capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert (out.returncode == 1 and out.stdout.count("TID251") == 2) is banned, out.stdout


def test_no_module_over_500_lines() -> None:
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in SERVER.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > 500} == {}


def test_public_imports_for_scripts_still_work() -> None:
    code = (
        "from server.aml import AMLRequest, AMLResponse, rawhttp\n"
        "from server.models import get_store, current_store, ModelStore\n"
        "import server.entry.aml as a; assert a.rawhttp is rawhttp\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
