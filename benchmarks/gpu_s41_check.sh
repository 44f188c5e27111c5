#!/usr/bin/env bash
# Session 41's second device call: the two fixes that the first (gpu_s41.sh) called for, on the
# same H200 set-up (/root/qwen.gguf joined, wheels in /tmp/site):
#   bash benchmarks/gpu_s41_check.sh RESULTS_DIR
# 1. bf16 SFT with SDPA (the default attention) now that training forwards skip the
#    memory-efficient kernel: does it pass step 17, where it returned a NaN gradient? (first
#    55 s of the run; the eager run of gpu_s41.sh finished all 125 steps)
# 2. activation offloading with spinlora's own pack hook: SFT of 256 rows finishes, with the
#    loss of the run without offloading (gpu_s41.sh: 1.1390786) and a lower CUDA peak
# 3. the CUDA branch of the unit tests of both fixes
set -x
R=$1
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SPINLORA_CACHE=/root/cache
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
M=/root/qwen.gguf; Q=configs/qwen05b_gsm8k.yaml
mkdir -p "$R" ../shared/data && ln -sfn "$PWD/.device/payload/gsm8k" ../shared/data/gsm8k
timeout 120 python3 -c "from pathlib import Path; from spinlora.models import gguf_model_dir; print(gguf_model_dir(Path('$M')))" > "$R/convert.log" 2>&1
timeout 55 python3 -m spinlora sft $Q --model $M model.dtype=bfloat16 train.log_every=1 \
  --output-dir /root/next/bf16_sdpa_fixed --overwrite > "$R/bf16_sdpa_fixed.log" 2>&1 &
timeout 80 python3 -m spinlora sft $Q --model $M data.sft_examples=256 train.offload_activations=true \
  --output-dir /root/next/offload_true --overwrite > "$R/offload_true.log" 2>&1 &
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_bf16.py > "$R/pytest_bf16.log" 2>&1 &
wait
cp /root/next/offload_true/sft/result.json "$R/offload_true_result.json"
grep -o "step [0-9]*/125[^[]*" "$R/bf16_sdpa_fixed.log" | tail -3
grep -h "loss_last\|Error\|NaN\|nan at" "$R"/*.log "$R"/*.json | head; tail -2 "$R/pytest_bf16.log"
