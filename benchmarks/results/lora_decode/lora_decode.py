"""Decode-step cost of an unmerged LoRA: base vs LoRA q/k/v vs LoRA on all 7 projections (bf16)."""
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]  # the checkout
sys.path.insert(0, str(ROOT / "src")); sys.path.insert(0, str(ROOT / "benchmarks"))
from spinlora.accounting import fix_mmap_threshold
fix_mmap_threshold()
from spinlora.config import ModelConfig
from spinlora.models import load_model
from decode_step import torch_side
from peft import LoraConfig, get_peft_model

rows, length, steps = int(sys.argv[1]), 120, 64
ids = torch.randint(100, 40000, (rows, length), generator=torch.Generator().manual_seed(0))
out = {}
for rep in range(2):
    for name, targets in [("base", None), ("qkv", ["q_proj", "k_proj", "v_proj"]),
                          ("all7", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])]:
        model, _ = load_model(ModelConfig(dtype="bfloat16"))
        if targets:
            model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=targets))
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    torch.nn.init.normal_(p, std=0.01)
        model.eval()
        r = torch_side(model, ids, steps, True)
        r.pop("_tokens", None)
        out.setdefault(name, []).append(r["ms_per_step"])
        print(name, rep, r, flush=True)
        del model
print(json.dumps({"rows": rows, "prompt": length, "steps": steps, "ms_per_step": out}))
