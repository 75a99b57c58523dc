#!/usr/bin/env bash
# Serve the example entry script and ONNX model on http://127.0.0.1:5001 (set-up included).
#   ./scripts/serve-example.sh            then, in another shell:
#   curl -s -H 'Content-Type: application/json' --data @examples/sample-request.json http://127.0.0.1:5001/score
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/scorehost ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
    .venv/bin/pip install --quiet -e .
fi
exec .venv/bin/scorehost serve --entry_script examples/score.py --model_dir examples/model "$@"
