#!/usr/bin/env bash
# The test suite: install, then every test (fast tiny-model tests + slow real-model tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/python.sh
# the llama.cpp engine's tests need llama-cpp-python, which pip builds from source (~5 min once;
# the demo does not need it, so setup.sh leaves it out)
$PY -m pip install -q --disable-pip-version-check -e ".[llamacpp]"
$PY -m pytest -q "$@"
