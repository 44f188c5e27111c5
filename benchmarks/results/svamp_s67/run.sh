#!/usr/bin/env bash
set -u
cd /work/main; export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824
export PATH=/work/main/.venv/bin:$PATH
S=/work/exp/s66; T=/work/exp/s67
P="data.answer_check=equation data.conjoin_every=true data.conjoin_ask=0.5 data.conjoin_both=0.5 \
   spin.prompt_rows=varied spin.prompts=null spin.chosen=own_correct spin.loss=sigmoid_nll \
   spin.opponent.samples=8 spin.opponent.temperature=1.0 spin.heldout=64 spin.keep_best=heldout_accuracy"
arm() {  # name source option seeds...
  local name=$1 src=$2 opt=$3; shift 3
  local flag="spin.reference=start"; [ "$opt" = mix ] && flag="spin.mix_previous=true"
  python $T/prep.py $S/$src $T/$name $opt || return 1
  echo "$name start $(date -u +%H:%M:%S)"
  spinlora spin configs/svamp_best.yaml --adapter $S/K1e/sft/adapter $P spin.lr=2.0e-4 spin.epochs=2 \
    spin.iterations=2 "stages=[spin,eval]" "eval.models=[spin]" $flag "$@" --output-dir $T/$name --resume \
    > $T/$name.log 2>&1 || { echo "$name failed $?"; return 1; }
  echo "$name done $(date -u +%H:%M:%S)"
}
before() { [ "$(date -u +%H%M)" -lt "$1" ]; }
arm R1 I1 reference
arm M1 I1 mix
if before 2305; then arm R2 I2 reference seed=1 spin.opponent.seed=1; else echo "R2 skipped (clock)"; fi
if before 2330; then arm M2 I2 mix seed=1 spin.opponent.seed=1; else echo "M2 skipped (clock)"; fi
echo "all done $(date -u +%H:%M:%S)"
