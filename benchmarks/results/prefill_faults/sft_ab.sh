#!/bin/bash
# SFT on the demo's first 128 rows alone, with and without a raised trim threshold
cd /work/main
for i in 1 2; do
for tt in none 33554432; do
  rm -rf /work/exp/s33/run_sft_${tt}_$i
  if [ $tt = none ]; then E=""; else E="MALLOC_TRIM_THRESHOLD_=$tt"; fi
  env $E /usr/bin/time -v .venv/bin/spinlora run configs/demo.yaml data.sft_examples=128 "stages=[sft]" output_dir=/work/exp/s33/run_sft_${tt}_$i > /work/exp/s33/sft_${tt}_$i.log 2>&1
  echo "$tt $i $(grep -E 'Elapsed|Maximum resident|Minor' /work/exp/s33/sft_${tt}_$i.log | tr -s ' ' | tr '\n' ' ') train_s=$(python3 -c "import json;print(json.load(open('/work/exp/s33/run_sft_${tt}_$i/sft/result.json'))['accounting']['phases']['train']['seconds'])")"
done; done
