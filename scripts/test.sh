#!/usr/bin/env bash
# The test suite: install, then every test (fast tiny-model tests + slow real-model tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/python.sh
# the test tools (lm_eval, bitsandbytes, tensorboard, mkdocs, pytest), and llama-cpp-python for
# the llama.cpp engine's tests, which pip builds from source (~5 min once;
# the demo needs none of them, so setup.sh leaves them out)
$PY -m pip install -q --disable-pip-version-check -e ".[test,llamacpp]"
$PY -m pytest -q "$@"
