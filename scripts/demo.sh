#!/usr/bin/env bash
# The main job: install, then SFT -> 1 iteration of SPIN (its defaults) -> SVAMP eval of
# base / SFT / SPIN (200 problems) on the embedded model (configs/demo.yaml).
# Outputs go to runs/demo (replaced on each run of this script).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/python.sh
$PY -m spinlora run configs/demo.yaml --overwrite "$@"
