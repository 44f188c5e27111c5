#!/usr/bin/env bash
# Session 41's device run: what of benchmarks/gpu_next.sh fits a lease of 15 minutes of one H200
# in all, with about five of them spent starting the machine and carrying the 0.5B GGUF in nine
# 58 MB parts. Run in the repository root there, after the parts were joined as /root/qwen.gguf
# and the wheels of transformers 5.23.0 / peft 0.21.2 / gguf 0.19.0 installed in /tmp/site:
#     bash benchmarks/gpu_s41.sh RESULTS_DIR SECONDS
# Every step has a deadline inside SECONDS; what finished is in RESULTS_DIR, whatever did not.
# Order: the model's conversion (once, alone: parallel runs would race on the cache), then the
# generation speed alone (a timing), then the rest side by side (a NaN check, memory peaks, and
# two small quality points, none of them a timing).
set -x
R=$1; T=$2; t0=$(date +%s)
left() { echo $(( T - ($(date +%s) - t0) )); }
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SPINLORA_CACHE=/root/cache
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
M=/root/qwen.gguf; SFT=.device/payload/sft_adapter; Q=configs/qwen05b_gsm8k.yaml
mkdir -p "$R" ../shared/data && ln -sfn "$PWD/.device/payload/gsm8k" ../shared/data/gsm8k
nvidia-smi > "$R/nvidia_smi.txt" 2>&1
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name())" > "$R/versions.txt" 2>&1
timeout 150 python3 -c "from pathlib import Path; from spinlora.models import gguf_model_dir; print(gguf_model_dir(Path('$M')))" > "$R/convert.log" 2>&1
echo "convert done at $(( $(date +%s) - t0 )) s" >> "$R/times.txt"
# 1. issue 9 item 2: generation tokens/s, HF generate against spinlora's auto and static cache
#    (compiled decode), bf16, 64 prompts, batch 32, 256 new tokens; two passes each, alone
timeout 140 python3 benchmarks/generation_speed.py --model $M --prompts 64 --batch 32 \
  --max-new-tokens 256 --sides hf,auto,static --repeats 2 --out "$R/generation_speed_h200.json" \
  > "$R/generation_speed.log" 2>&1
echo "generation speed done at $(( $(date +%s) - t0 )) s" >> "$R/times.txt"
D=$(( $(left) - 25 ))
# 2. issue 8 item 5: bf16 SFT (2000 rows, 125 steps), SDPA against eager: does SDPA's NaN stay away?
for attn in sdpa eager; do
  timeout $D python3 -m spinlora sft $Q --model $M model.dtype=bfloat16 model.attn_implementation=$attn \
    train.log_every=1 --output-dir /root/next/bf16_$attn --overwrite > "$R/bf16_$attn.log" 2>&1 &
done
# 2b/2c. peak CUDA memory of SFT with and without activation offloading; the planner's 14 GiB plan
# and an SFT run under it
( for off in false true; do
    timeout $D python3 -m spinlora sft $Q --model $M data.sft_examples=256 train.offload_activations=$off \
      --output-dir /root/next/offload_$off --overwrite > "$R/offload_$off.log" 2>&1
  done
  timeout $D python3 -m spinlora plan $Q --model $M --memory-budget 14GiB > "$R/plan_14gib.log" 2>&1
  timeout $D python3 -m spinlora sft $Q --model $M data.sft_examples=256 --memory-budget 14GiB \
    --output-dir /root/next/plan_sft --overwrite > "$R/plan_sft.log" 2>&1 ) &
# 3. issues 8 and 11 at a reduced scale: one Iterative-RPO iteration on 500 prompts, RL for 4
#    rounds, each from the committed SFT adapter (GSM8K 24.1 % ± 1.2) and scored on all 1319
COMMON="--config $Q --model $M --sft-adapter $SFT --no-reference --set generation.batch_size=384"
timeout $D python3 benchmarks/spin_quality.py $COMMON --out /root/next/irpo --point \
  "spin.chosen=own_correct spin.loss=sigmoid_nll spin.opponent.samples=4 spin.opponent.temperature=0.8 spin.lr=5.0e-6 spin.prompts=500 spin.iterations=1 spin.heldout=0 spin.keep_best=null" \
  > "$R/irpo.log" 2>&1 &
timeout $D python3 benchmarks/spin_quality.py $COMMON --stage rl --out /root/next/rl \
  --point "rl.lr=1.0e-5 rl.rounds=4 rl.heldout=0" > "$R/rl.log" 2>&1 &
wait
echo "all done at $(( $(date +%s) - t0 )) s" >> "$R/times.txt"
