#!/usr/bin/env bash
# Install everything the tests need into .venv, then lint, type-check and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[dev,loadtest]'
if ! command -v wrk >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # The load-test smoke run and the side-by-side benchmark use wrk for peak figures.
    (apt-get install -y --no-install-recommends wrk >/dev/null 2>&1 ||
        (apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends wrk >/dev/null 2>&1)) || true
fi
echo "== ruff"; .venv/bin/ruff check server tests loadtests examples
echo "== mypy"; .venv/bin/mypy
echo "== pytest"; .venv/bin/pytest -q -ra "$@"
