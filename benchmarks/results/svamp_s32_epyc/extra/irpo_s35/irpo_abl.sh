#!/bin/bash
# IRPO iteration 1 from the study's SFT adapter (s34 = s32's answers), one override each.
# A (the SFT adapter) and OUT (the runs' folder) may be set to start from another study.
PY=/work/main/.venv/bin/python; cd /work/main
A=${A:-/work/exp/s34/study/main/sft/adapter}; OUT=${OUT:-/work/exp/s35/irpo}
for spec in "$@"; do
  name=${spec%%:*}; ov=${spec#*:}
  out=$OUT/$name; rm -rf $out; mkdir -p $OUT
  /usr/bin/time -v $PY -m spinlora spin configs/svamp.yaml --adapter $A spin.chosen=own_correct \
    spin.loss=sigmoid_nll spin.opponent.samples=4 spin.opponent.temperature=0.8 spin.lr=2.0e-4 \
    spin.epochs=2 spin.iterations=1 "stages=[spin,eval]" "eval.models=[spin]" $ov \
    --output-dir $out > $out.log 2>&1
  echo "$name rc=$? $(grep -E 'Elapsed' $out.log | tr -s ' ')"
done
