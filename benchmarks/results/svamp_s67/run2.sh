#!/usr/bin/env bash
# M1 after run.sh ends (its first M1 was refused by --resume: the copied session-66 config.yaml
# had no spin.reference key; rundir now reads a missing key as its default)
set -u
while kill -0 14434 2>/dev/null; do sleep 20; done  # run.sh
cd /work/main; export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824
export PATH=/work/main/.venv/bin:$PATH
S=/work/exp/s66; T=/work/exp/s67
P="data.answer_check=equation data.conjoin_every=true data.conjoin_ask=0.5 data.conjoin_both=0.5 \
   spin.prompt_rows=varied spin.prompts=null spin.chosen=own_correct spin.loss=sigmoid_nll \
   spin.opponent.samples=8 spin.opponent.temperature=1.0 spin.heldout=64 spin.keep_best=heldout_accuracy"
if [ "$(date -u +%H%M)" -lt 2315 ]; then
  [ -f $T/M1_refused.log ] || mv $T/M1.log $T/M1_refused.log
  python $T/prep.py $S/I1 $T/M1 mix || exit 1
  echo "M1 start $(date -u +%H:%M:%S)"
  spinlora spin configs/svamp_best.yaml --adapter $S/K1e/sft/adapter $P spin.lr=2.0e-4 spin.epochs=2 \
    spin.iterations=2 "stages=[spin,eval]" "eval.models=[spin]" spin.mix_previous=true --output-dir $T/M1 --resume \
    > $T/M1.log 2>&1 || { echo "M1 failed $?"; exit 1; }
  echo "M1 done $(date -u +%H:%M:%S)"
else echo "M1 skipped (clock)"; fi
