#!/bin/bash
# Same work both sides, alone: base model and the s32 SFT adapter (--adapter), greedy SVAMP, first N problems
N=${N:-320}; OUT=${OUT:-/work/exp/s34}; PY=${PY:-/work/main/.venv/bin/python}
AD=${AD:-/work/exp/s34/pipe/sft/adapter}  # a copy of session 32's study SFT adapter
for round in 1 2; do
for arg in prev=/tmp/ab/prev new=/work/main; do
  side=${arg%%=*}; dir=${arg#*=}
  for what in base sft; do
    out=$OUT/ab_${side}_${what}_$round
    rm -rf $out
    cd $dir
    if [ $what = base ]; then
      env PYTHONPATH=$dir/src /usr/bin/time -v $PY -m spinlora run configs/svamp.yaml "stages=[eval]" "eval.models=[base]" eval.limit=$N --output-dir $out > $out.log 2>&1
    else
      env PYTHONPATH=$dir/src /usr/bin/time -v $PY -m spinlora eval configs/svamp.yaml --adapter $AD "eval.models=[sft]" eval.limit=$N --output-dir $out > $out.log 2>&1
    fi
    $PY - "$out" "$side" "$what" <<'P'
import json,sys,re
d=json.load(open(sys.argv[1]+"/eval/result.json"))
ph=d["accounting"]["phases"]; r=d["rows"][0]["tasks"]["svamp"]
log=open(sys.argv[1]+".log").read()
fl=re.search(r"Minor \(reclaiming a frame\) page faults: (\d+)", log).group(1)
rss=re.search(r"Maximum resident set size \(kbytes\): (\d+)", log).group(1)
wall=re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", log).group(1)
for k,v in ph.items(): print(sys.argv[2], sys.argv[3], k, round(v["seconds"],1), v["tokens"], round(v["peak_bytes"]/1e9,2), "acc", r["acc"], "faults", fl, "wall", wall, flush=True)
P
  done
done
done
