#!/bin/bash
# Base-model evaluation (adapter attached, disabled, as in the study), alternating, alone: the
# first N SVAMP problems, 256 new tokens, batch 64. Sides (ORDER): old = the tree of a485d2e
# (git worktree at /tmp/ab/old), new = HEAD, fused / unfused = HEAD with adapter.fused=true / false.
#   session 37: bash ab_base.sh                      (old new, twice; OUT=/work/exp/s37/ab)
#   session 38: ORDER="new old" OUT=/work/exp/s38/ab_rev bash ab_base.sh
#               ORDER="old new" ROUNDS=3 OUT=/work/exp/s38/ab_rev bash ab_base.sh
#               ORDER="unfused fused" OUT=/work/exp/s38/ab_fused bash ab_base.sh
#               ORDER="unfused old" OUT=/work/exp/s38/ab_tree bash ab_base.sh
N=${N:-192}; OUT=${OUT:-/work/exp/s37/ab}; PY=/work/main/.venv/bin/python
A=/work/exp/s36/study/main/sft/adapter
mkdir -p $OUT
for round in ${ROUNDS:-1 2}; do
for side in ${ORDER:-old new}; do
  SRC=/work/main; X=
  case $side in old) SRC=/tmp/ab/old;; fused) X=adapter.fused=true;; unfused) X=adapter.fused=false;; esac
  out=$OUT/${side}_$round; rm -rf $out
  cd $SRC
  env PYTHONPATH=$SRC/src /usr/bin/time -v $PY -m spinlora eval configs/svamp.yaml --adapter $A "eval.models=[base]" eval.limit=$N $X --output-dir $out > $out.log 2>&1
  echo "$side $round rc=$? $(python3 -c "import json;r=json.load(open('$out/eval/result.json'));print({k:v['seconds'] for k,v in r['accounting']['phases'].items()}, r['rows'][0]['tasks']['svamp']['acc'])") $(grep -E 'Elapsed' $out.log | tr -s ' ')"
done
done
