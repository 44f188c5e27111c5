#!/bin/bash
# Base-model evaluation (adapter attached, disabled, as in the study), old code a485d2e vs HEAD,
# alternating, alone: the first N SVAMP problems, 256 new tokens, batch 64.
N=${N:-192}; OUT=${OUT:-/work/exp/s37/ab}; PY=/work/main/.venv/bin/python
A=/work/exp/s36/study/main/sft/adapter
mkdir -p $OUT
for round in ${ROUNDS:-1 2}; do
for side in ${ORDER:-old new}; do
  if [ $side = old ]; then SRC=/tmp/ab/old; else SRC=/work/main; fi
  out=$OUT/${side}_$round; rm -rf $out
  cd $SRC
  env PYTHONPATH=$SRC/src /usr/bin/time -v $PY -m spinlora eval configs/svamp.yaml --adapter $A "eval.models=[base]" eval.limit=$N --output-dir $out > $out.log 2>&1
  echo "$side $round rc=$? $(python3 -c "import json;r=json.load(open('$out/eval/result.json'));print({k:v['seconds'] for k,v in r['accounting']['phases'].items()}, r['rows'][0]['tasks']['svamp']['acc'])") $(grep -E 'Elapsed' $out.log | tr -s ' ')"
done
done
