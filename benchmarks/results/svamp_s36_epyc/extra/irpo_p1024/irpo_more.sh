#!/bin/bash
# IRPO iteration 1 from the s36 study's SFT adapter, the study's IRPO settings plus overrides:
# session 35's script with this study's adapter and output folder.
A=/work/exp/s36/study/main/sft/adapter OUT=/work/exp/s37/irpo \
  exec bash /work/main/benchmarks/results/svamp_s32_epyc/extra/irpo_s35/irpo_abl.sh "$@"
