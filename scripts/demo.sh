#!/usr/bin/env bash
# The main job: install, then SFT -> 2 SPIN iterations -> GSM8K eval on the embedded model.
# Outputs go to runs/demo (replaced on each run of this script).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/python.sh
$PY -m spinlora run configs/demo.yaml --overwrite "$@"
