#!/usr/bin/env bash
# GPU study driver (device machine). Runs detached; everything lands in $HOME/sq.
set -x
export PYTHONPATH=$HOME/site:$HOME/repo/src PYTHONUNBUFFERED=1 SPINLORA_CACHE=$HOME/cache
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
cd $HOME/repo
mkdir -p $HOME/shared; ln -sfn $HOME/data $HOME/shared/data
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name())"
python3 -c "from spinlora.models import resolve_model_path; print(resolve_model_path('$HOME/qwen.gguf'))"
G="--set generation.batch_size=704"
( python3 -m spinlora sft configs/qwen05b_gsm8k.yaml --model $HOME/qwen.gguf model.dtype=bfloat16 \
    --output-dir $HOME/bf16 --overwrite > $HOME/bf16.log 2>&1 ) &
python3 benchmarks/spin_quality.py --config configs/qwen05b_gsm8k.yaml --model $HOME/qwen.gguf \
  --out $HOME/sq --parallel 5 $G \
  --point "spin.loss=sigmoid_nll spin.lr=2.0e-5" \
  --point "spin.loss=dpop spin.lr=2.0e-5" \
  --point "spin.loss=sigmoid spin.lr=2.0e-5" \
  --point "spin.loss=sigmoid_nll spin.lr=5.0e-6" \
  --point "spin.loss=ipo spin.beta=0.5 spin.lr=5.0e-6"
echo STUDY_DONE
