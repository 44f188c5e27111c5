#!/bin/bash
# In a run, after a short SFT (64 rows): the base model's evaluation of the first N SVAMP problems,
# decoding_heap on (new) or off (MALLOC_TRIM_THRESHOLD_=131072, glibc's default: the old behaviour)
N=${N:-192}; OUT=/work/exp/s34; PY=/work/main/.venv/bin/python
cd /work/main
for round in 1 2; do
for side in off on; do
  out=$OUT/ab3_${side}_$round; rm -rf $out
  if [ $side = off ]; then E="MALLOC_TRIM_THRESHOLD_=131072"; else E="X=1"; fi
  env $E /usr/bin/time -v $PY -m spinlora run configs/svamp.yaml data.sft_examples=64 "stages=[sft,eval]" "eval.models=[base]" eval.limit=$N --output-dir $out > $out.log 2>&1
  $PY - "$out" "$side" <<'P'
import json,sys,re
d=json.load(open(sys.argv[1]+"/eval/result.json"))
ph=d["accounting"]["phases"]; r=d["rows"][0]["tasks"]["svamp"]
log=open(sys.argv[1]+".log").read()
fl=re.search(r"Minor \(reclaiming a frame\) page faults: (\d+)", log).group(1)
st=re.search(r"System time \(seconds\): (\S+)", log).group(1)
for k,v in ph.items(): print(sys.argv[2], k, round(v["seconds"],1), v["tokens"], round(v["peak_bytes"]/1e9,2), "acc", r["acc"], "faults", fl, "sys", st, flush=True)
P
done
done
