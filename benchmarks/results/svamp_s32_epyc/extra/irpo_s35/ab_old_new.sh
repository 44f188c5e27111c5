#!/bin/bash
# Same work, old code (f33bd7c, session 16's study) vs new (HEAD), alternating, alone:
# SFT on 160 rows (10 steps), then base + SFT evaluation of the first N SVAMP problems.
N=${N:-192}; OUT=/work/exp/s35/ab; PY=/work/main/.venv/bin/python
mkdir -p $OUT
TM="adapter.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]"
for round in 1 2; do
for side in old new; do
  if [ $side = old ]; then SRC=/tmp/ab/old; else SRC=/work/main; fi
  out=$OUT/${side}_$round; rm -rf $out
  cd $SRC
  env PYTHONPATH=$SRC/src /usr/bin/time -v $PY -m spinlora run configs/svamp.yaml data.sft_examples=160 "$TM" "stages=[sft,eval]" "eval.models=[base,sft]" eval.limit=$N --output-dir $out > $out.log 2>&1
  echo "$side $round rc=$? $(grep -E 'Elapsed|Maximum resident' $out.log | tr -s ' ' | tr '\n' ' ')"
done
done
