#!/bin/bash
# HEAD with adapter.fused=false (peft's forward) vs HEAD (fused), alternating, alone.
N=${N:-192}; OUT=${OUT:-/work/exp/s38/ab_fused}; PY=/work/main/.venv/bin/python
A=/work/exp/s36/study/main/sft/adapter
mkdir -p $OUT; cd /work/main
for round in 1 2; do
for side in ${ORDER:-unfused fused}; do
  if [ $side = unfused ]; then X=adapter.fused=false; else X=adapter.fused=true; fi
  out=$OUT/${side}_$round; rm -rf $out
  env PYTHONPATH=/work/main/src /usr/bin/time -v $PY -m spinlora eval configs/svamp.yaml --adapter $A "eval.models=[base]" eval.limit=$N $X --output-dir $out > $out.log 2>&1
  echo "$side $round rc=$? $(python3 -c "import json;r=json.load(open('$out/eval/result.json'));print({k:v['seconds'] for k,v in r['accounting']['phases'].items()})") $(grep -E 'Elapsed' $out.log | tr -s ' ')"
done
done
