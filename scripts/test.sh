#!/usr/bin/env bash
# The test suite: install, then every test (fast tiny-model tests + slow real-model tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/python.sh
$PY -m pytest -q "$@"
