#!/bin/bash
# IRPO iteration 1 from the s36 study's SFT adapter, the study's IRPO settings plus overrides.
PY=/work/main/.venv/bin/python; cd /work/main
A=/work/exp/s36/study/main/sft/adapter
for spec in "$@"; do
  name=${spec%%:*}; ov=${spec#*:}
  out=/work/exp/s37/irpo/$name; rm -rf $out; mkdir -p /work/exp/s37/irpo
  /usr/bin/time -v $PY -m spinlora spin configs/svamp.yaml --adapter $A spin.chosen=own_correct \
    spin.loss=sigmoid_nll spin.opponent.samples=4 spin.opponent.temperature=0.8 spin.lr=2.0e-4 \
    spin.epochs=2 spin.iterations=1 "stages=[spin,eval]" "eval.models=[spin]" $ov \
    --output-dir $out > $out.log 2>&1
  echo "$name rc=$? $(grep -E 'Elapsed' $out.log | tr -s ' ')"
done
