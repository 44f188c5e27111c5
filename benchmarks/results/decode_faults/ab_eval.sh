#!/bin/bash
# Same work both sides: the base model's greedy SVAMP evaluation, first N problems, alone on the machine.
N=${N:-320}
ENVX=${ENVX:-}
OUT=${OUT:-/work/exp/s32}   # where the run folders and logs go
PY=/work/main/.venv/bin/python
# each argument is a side, NAME or NAME=CHECKOUT: "old" runs /tmp/ab/old, any other bare NAME
# /work/main (session 32: old new old new); session 33 named its worktrees (prev=/tmp/ab/prev)
for arg in "$@"; do
  side=${arg%%=*}
  if [ "$arg" != "$side" ]; then dir=${arg#*=}; elif [ "$side" = old ]; then dir=/tmp/ab/old; else dir=/work/main; fi
  out=$OUT/ab_${side}_$(date +%H%M%S)
  cd $dir
  env PYTHONPATH=$dir/src $ENVX /usr/bin/time -v $PY -m spinlora run configs/svamp.yaml "stages=[eval]" "eval.models=[base]" eval.limit=$N --output-dir $out > $out.log 2>&1
  $PY - "$out" "$side" <<'P'
import json,sys
d=json.load(open(sys.argv[1]+"/eval/result.json"))
ph=d["accounting"]["phases"]; r=d["rows"][0]["tasks"]["svamp"]
for k,v in ph.items(): print(sys.argv[2], k, round(v["seconds"],1), v["tokens"], v["tokens_per_s"], round(v["peak_bytes"]/1e9,2), "acc", r["acc"])
P
done
