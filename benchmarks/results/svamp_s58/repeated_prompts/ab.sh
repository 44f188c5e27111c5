#!/bin/bash
# A/B of the repeated-prompt prefill: the same benchmark file and arguments, the code before (cb12de0^) and after
cd /work/main
ARGS="--prompts 16 --samples 8 --sides drop,continuous --batch 64 --max-new-tokens 256 --repeats 2 --adapter /work/exp/s56/K1c/sft/adapter --data /work/shared/data/svamp/mawps-asdiv-a_train.csv"
for round in 3 4; do
  for side in before after; do
    root=/work/main; [ $side = before ] && root=/tmp/s58_base
    echo "== $side (round $round)"
    .venv/bin/python $root/benchmarks/generation_speed.py $ARGS --out /work/exp/s58/ab_${side}_$round.json 2>&1 | grep "^continuous"
  done
done
