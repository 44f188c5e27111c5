#!/usr/bin/env bash
# The test suite: install, then every test (fast tiny-model tests + slow real-model tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${VIRTUAL_ENV:-}" ]; then PY=.venv/bin/python; else PY=python; fi
$PY -m pytest -q "$@"
