"""One SFT forward + backward with and without the padding mask on right-padded rows.

    python benchmarks/padding_mask.py mask     # the decoder gets the padding mask (before 2026-11-23)
    python benchmarks/padding_mask.py nomask   # causal attention only (scoring._causal_mask_only)

Run each side in its own process (peak RSS is per process). SmolLM2-135M, LoRA q/k/v, 8 seeded
random rows (prompts 61-120 tokens, answers 100-249), two passes; prints the peak RSS over the
post-load RSS and the seconds.
"""
import random
import sys
import time

import torch

from spinlora import scoring
from spinlora.accounting import current_rss
from spinlora.adapters import attach
from spinlora.config import AdapterConfig, ModelConfig
from spinlora.data import collate
from spinlora.models import load_model

torch.manual_seed(0)
random.seed(0)
model, tok = load_model(ModelConfig())
model = attach(model, AdapterConfig())
pairs = [([1] + [random.randrange(100, 40000) for _ in range(random.randrange(60, 120))],
          [random.randrange(100, 40000) for _ in range(random.randrange(100, 250))])
         for _ in range(8)]
batch = collate(pairs, tok.pad_token_id)
if sys.argv[1:] == ["mask"]:
    scoring._causal_mask_only = lambda b: b.attention_mask
base = current_rss()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
t = time.perf_counter()
for _ in range(2):
    lp, _ = scoring.answer_logps(model, batch)
    lp.sum().backward()
    model.zero_grad()
with open("/proc/self/status") as f:
    peak = int(f.read().split("VmHWM:")[1].split()[0]) * 1024
print(f"{sys.argv[1:]}: peak over post-load {(peak - base) // 2**20} MB, "
      f"{time.perf_counter() - t:.1f} s, sum of log-probs {float(lp.sum()):.4f}")
