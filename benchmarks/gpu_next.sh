#!/usr/bin/env bash
# What is still open for the next session lent a GPU (issues 8 and 11): RL with the correctness
# reward and SPIN with the model's own right answer preferred (Iterative RPO), on GSM8K with the
# 0.5B stand-in, each from the committed SFT adapter (24.1 % ± 1.2 on all 1319 questions; base
# 24.6 %) and scored on all 1319. Sized for a 15-minute lease: benchmarks/gpu_lease.sh gives
# the calls (the wheels, the adapter and GSM8K with the smallest GGUF part in the call that starts
# the machine, one 58 MB part a call after it, then this script started detached as
#     bash benchmarks/gpu_next.sh RESULTS_DIR SECONDS
# in the repository root there, and a last call that collects). About 100 s go to starting and
# shipping and 54 s to the model's conversion. Session 44 ran both points at a toy scale on the
# CPU with the code of its day (the 0.5B GGUF, bf16, 2-12 prompts, 4-8 eval questions): the RL
# command ran to its evaluation; the IRPO command sampled and then stopped with its own error, no
# right answer among 12 prompts x 2 samples (the SFT is right on ~1 in 8 sampled answers; 400 x 4
# at full scale); SPIN with the gold answer ran its sampling and training on the same adapter. Generation dominates: 1024 sampled answers took
# about 1:30 a round once compiled, beside other runs. So RL gets 3 rounds and IRPO one
# iteration on 400 prompts x 4 samples, side by side, with nothing else on the card.
# Session 41 measured everything else of the old list (generation speed, bf16 SDPA against
# eager, offloading, the planner): benchmarks/gpu_s41.sh, benchmarks/results/gpu_s41/.
set -x
R=$1; T=$2; t0=$(date +%s)
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SPINLORA_CACHE=/root/cache
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
M=/root/qwen.gguf; SFT=.device/payload/sft_adapter; Q=configs/qwen05b_gsm8k.yaml
mkdir -p "$R" ../shared/data && ln -sfn "$PWD/.device/payload/gsm8k" ../shared/data/gsm8k
timeout 150 python3 -c "from pathlib import Path; from spinlora.models import gguf_model_dir; print(gguf_model_dir(Path('$M')))" > "$R/convert.log" 2>&1
D=$(( T - ($(date +%s) - t0) - 20 ))
COMMON="--config $Q --model $M --sft-adapter $SFT --no-reference --set generation.batch_size=384"
timeout $D python3 benchmarks/spin_quality.py $COMMON --out /root/next/irpo --point \
  "spin.chosen=own_correct spin.loss=sigmoid_nll spin.opponent.samples=4 spin.opponent.temperature=0.8 spin.lr=5.0e-6 spin.prompts=400 spin.iterations=1 spin.heldout=0 spin.keep_best=null" \
  > "$R/irpo.log" 2>&1 &
timeout $D python3 benchmarks/spin_quality.py $COMMON --stage rl --out /root/next/rl \
  --point "rl.lr=1.0e-5 rl.rounds=3 rl.heldout=0" > "$R/rl.log" 2>&1 &
wait
cp -r /root/next/irpo/results "$R/irpo_results" 2>/dev/null
cp -r /root/next/rl/results "$R/rl_results" 2>/dev/null
echo "done at $(( $(date +%s) - t0 )) s" >> "$R/times.txt"
