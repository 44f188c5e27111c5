#!/usr/bin/env bash
# Session 39's combined adapters (PREREGISTERED.md), each scored on all 1000 SVAMP problems.
# Usage: STUDY=/work/exp/s39/study OUT=/work/exp/s39/combine bash combine_points.sh [E1 E2 E3 E4]
set -euo pipefail
cd "$(dirname "$0")/../../.."
STUDY=${STUDY:-runs/svamp_study}; OUT=${OUT:-runs/s39_combine}
SFT=$STUDY/main/sft/adapter; IRPO=$STUDY/irpo/spin/iter_2/adapter; GRPO=$STUDY/grpo/rl/adapter
declare -A TERMS=(
  [E1]="$IRPO=2 $SFT=-1"            # ExPO past IRPO's second iteration, alpha 1 (the point)
  [E2]="$IRPO=1.5 $SFT=-0.5"        # alpha 0.5
  [E3]="$IRPO=1 $GRPO=1 $SFT=-1"    # both displacements from the shared SFT, added
  [E4]="$GRPO=2 $SFT=-1"            # ExPO past GRPO, alpha 1
)
PY=${PY:-.venv/bin/python}
for p in "${@:-E1 E2 E3 E4}"; do
  for q in $p; do
    $PY -m spinlora combine ${TERMS[$q]} --out "$OUT/$q/adapter" --overwrite
    /usr/bin/time -v $PY -m spinlora eval configs/svamp.yaml --adapter "$OUT/$q/adapter" \
      "eval.models=[sft]" --output-dir "$OUT/$q/run" --overwrite > "$OUT/$q/eval.log" 2>&1
    grep -a 'SVAMP accuracy' "$OUT/$q/eval.log"
  done
done
