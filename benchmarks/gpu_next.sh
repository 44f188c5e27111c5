#!/usr/bin/env bash
# The measurements still open (issues 8, 9, 11), for the next session lent a GPU. Run detached on
# the device machine after the set-up that benchmarks/results/spin_quality/README.md describes
# (wheels in $HOME/site, src configs benchmarks in $HOME/repo, GSM8K in $HOME/data, the GGUF
# assembled as $HOME/qwen.gguf):
#     setsid nohup bash $HOME/repo/benchmarks/gpu_next.sh > $HOME/next.log 2>&1 &
# then poll with calls that sleep and copy $HOME/next/*.json, *.md and the logs into $OUT.
# Every point starts from the SFT adapter of the first study (committed, so no SFT is rerun) and
# is evaluated on all 1319 test questions; SFT scored 24.1 % ± 1.2 there, the base 24.6 %.
set -x
export PYTHONPATH=$HOME/site:$HOME/repo/src PYTHONUNBUFFERED=1 SPINLORA_CACHE=$HOME/cache
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
cd $HOME/repo
mkdir -p $HOME/shared $HOME/next; ln -sfn $HOME/data $HOME/shared/data
SFT=benchmarks/results/spin_quality/sft_adapter
COMMON="--config configs/qwen05b_gsm8k.yaml --model $HOME/qwen.gguf --sft-adapter $SFT
        --set generation.batch_size=384"  # six processes share the card (~17 GB each at 704)
# 1. issue 9 item 2: generation tokens/s, HF generate vs the static cache (compiled decode), bf16,
#    batch 32; two passes each (the first includes compilation)
python3 benchmarks/generation_speed.py --model $HOME/qwen.gguf --prompts 64 --batch 32 \
  --repeats 2 --out $HOME/next/generation_speed_h100.json > $HOME/next/generation_speed.log 2>&1
# 2. issue 8 item 5: bf16 SFT, SDPA against eager attention. On the H100 (session 3) SDPA's
#    gradient turned NaN at step 17, with the padding mask; on CPU the same step was finite.
#    Right-padded training batches now go without the mask (SDPA is_causal): does it finish?
for attn in sdpa eager; do
  ( python3 -m spinlora sft configs/qwen05b_gsm8k.yaml --model $HOME/qwen.gguf model.dtype=bfloat16 \
      model.attn_implementation=$attn --output-dir $HOME/next/bf16_$attn --overwrite \
      > $HOME/next/bf16_$attn.log 2>&1 ) &
done
# 2b. activation offloading: SFT peak CUDA memory (sft/result.json accounting) with and without
for off in false true; do
  python3 -m spinlora sft configs/qwen05b_gsm8k.yaml --model $HOME/qwen.gguf data.sft_examples=256 \
    train.offload_activations=$off --output-dir $HOME/next/offload_$off --overwrite \
    > $HOME/next/offload_$off.log 2>&1
done
# 2c. the memory planner on CUDA (exact probes there): the T4-sized plan for the 0.5B recipe, then
#     an SFT run under it, whose sft/result.json peak must stay under 14 GiB
python3 -m spinlora plan configs/qwen05b_gsm8k.yaml --model $HOME/qwen.gguf --memory-budget 14GiB \
  > $HOME/next/plan_14gib.log 2>&1
python3 -m spinlora sft configs/qwen05b_gsm8k.yaml --model $HOME/qwen.gguf data.sft_examples=256 \
  --memory-budget 14GiB --output-dir $HOME/next/plan_sft --overwrite > $HOME/next/plan_sft.log 2>&1
# 3. issues 8 and 11: RL with the correctness reward (KL as β·½·k², scored at the sampling
#    temperature), and SPIN with the model's own right answer preferred (Iterative RPO)
python3 benchmarks/spin_quality.py $COMMON --stage rl --out $HOME/next/rl --parallel 3 \
  --point "rl.lr=1.0e-5" --point "rl.lr=3.0e-6" --point "rl.lr=1.0e-5 rl.clip=0.0004" \
  > $HOME/next/rl.log 2>&1 &
python3 benchmarks/spin_quality.py $COMMON --out $HOME/next/irpo --parallel 2 --no-reference \
  --point "spin.chosen=own_correct spin.loss=sigmoid_nll spin.opponent.samples=4 spin.opponent.temperature=0.8 spin.lr=5.0e-6" \
  --point "spin.chosen=own_correct spin.loss=dpop spin.opponent.samples=4 spin.opponent.temperature=0.8 spin.lr=2.0e-5" \
  > $HOME/next/irpo.log 2>&1 &
wait
echo NEXT_DONE
