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
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # A real Prometheus scrapes a live server (tests/test_prometheus_server.py); promtool checks and
    # tests deploy/prometheus/alerts.yaml. On CI (CI=true) those tests fail when it is missing.
    (DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1 ||
        (apt-get update >/dev/null 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus >/dev/null 2>&1)) ||
        echo "warning: could not install Debian's prometheus package"
fi
echo "== ruff"; .venv/bin/ruff check server tests loadtests examples
echo "== ruff format"; .venv/bin/ruff format --check server tests loadtests examples
echo "== mypy"; .venv/bin/mypy
echo "== pip-audit"; bash scripts/audit.sh
echo "== pytest"; .venv/bin/pytest -q -ra "$@"
