#!/usr/bin/env bash
set -u
cd /work/main; export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824
export PATH=/work/main/.venv/bin:$PATH
S=/work/exp/s66; T=/work/exp/s68
P="data.answer_check=equation data.conjoin_every=true data.conjoin_ask=0.5 data.conjoin_both=0.5 \
   rl.algorithm=rft rl.prompt_rows=varied rl.prompts=null rl.rounds=1 rl.samples=8 \
   rl.temperature=1.0 rl.keep=4 rl.epochs=2 rl.heldout=64"
arm() {  # name options...
  local name=$1; shift
  echo "$name start $(date -u +%H:%M:%S)"
  spinlora rl configs/svamp_best.yaml --adapter $S/K1e/sft/adapter $P "stages=[rl,eval]" \
    "eval.models=[rl]" "$@" --output-dir $T/$name > $T/$name.log 2>&1 || { echo "$name failed $?"; return 1; }
  echo "$name done $(date -u +%H:%M:%S) acc $(acc $name)"
}
acc() { python -c "import json,sys; r=json.load(open('$T/$1/eval/result.json'))['rows'][0]; print(r['tasks']['svamp']['acc'])"; }
before() { [ "$(date -u +%H%M)" -lt "$1" ]; }
arm Q1 rl.lr=5.0e-4
arm Q2 rl.lr=5.0e-4 rl.plain_prompts=264
B="rl.lr=5.0e-4"; W=Q1
if [ -f $T/Q2/eval/result.json ] && [ -f $T/Q1/eval/result.json ] && \
   python -c "import sys; sys.exit(0 if float('$(acc Q2)') > float('$(acc Q1)') else 1)"; then
  B="rl.lr=5.0e-4 rl.plain_prompts=264"; W=Q2
fi
echo "better: $W"
if before 0240; then arm Q3 $B seed=1 rl.seed=1; else echo "Q3 skipped (clock)"; fi
if before 0255; then arm Q4 ${B/5.0e-4/1.5e-3}; else echo "Q4 skipped (clock)"; fi
echo "all done $(date -u +%H:%M:%S)"
