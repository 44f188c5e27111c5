#!/bin/bash
# old tree (a485d2e) vs HEAD tree with adapter.fused=false: the same forward on both sides.
N=192; OUT=/work/exp/s38/ab_tree; PY=/work/main/.venv/bin/python
A=/work/exp/s36/study/main/sft/adapter
mkdir -p $OUT
for round in 1 2; do
for side in headunfused old; do
  if [ $side = old ]; then SRC=/tmp/ab/old; X=; else SRC=/work/main; X=adapter.fused=false; fi
  out=$OUT/${side}_$round; rm -rf $out; cd $SRC
  env PYTHONPATH=$SRC/src /usr/bin/time -v $PY -m spinlora eval configs/svamp.yaml --adapter $A "eval.models=[base]" eval.limit=$N $X --output-dir $out > $out.log 2>&1
  echo "$side $round rc=$? $(python3 -c "import json;r=json.load(open('$out/eval/result.json'));print({k:v['seconds'] for k,v in r['accounting']['phases'].items()})") $(grep -E 'Elapsed' $out.log | tr -s ' ')"
done
done
