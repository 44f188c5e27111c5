#!/bin/bash
# The study's evaluations (configs/svamp.yaml, all 1000 SVAMP problems, batch 64): decode drop (the
# recipe) vs continuous, alternating, alone. base = the base view, sft = the s36 study's SFT adapter.
OUT=${OUT:-/work/exp/s38/ab_decode}; PY=/work/main/.venv/bin/python
A=/work/exp/s36/study/main/sft/adapter
mkdir -p $OUT; cd /work/main
for round in ${ROUNDS:-1}; do
for model in ${MODELS:-base sft}; do
for side in ${ORDER:-drop continuous}; do
  out=$OUT/${model}_${side}_$round; rm -rf $out
  env PYTHONPATH=/work/main/src /usr/bin/time -v $PY -m spinlora eval configs/svamp.yaml --adapter $A "eval.models=[$model]" generation.decode=$side ${LIMIT:+eval.limit=$LIMIT} --output-dir $out > $out.log 2>&1
  echo "$model $side $round rc=$? $(python3 -c "import json;r=json.load(open('$out/eval/result.json'));print({k:v['seconds'] for k,v in r['accounting']['phases'].items()})") $(grep -E 'Elapsed|Maximum resident' $out.log | tr -s ' ' | tr '\n' ' ')"
done
done
done
