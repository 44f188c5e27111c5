"""The LoRA family on peft's LoraConfig: LoRA, DoRA, PiSSA, OLoRA.

- LoRA: W = W0 + (alpha/r)·B·A, B = 0 at init. Paper: Hu et al. 2021, arXiv 2106.09685.
- DoRA: weight-decomposed LoRA, a trainable magnitude per output row. Paper: Liu et al. 2024,
  arXiv 2402.09353.
- PiSSA: A, B from the top-r singular components of W0; the base becomes W0 − B·A (peft changes
  the base weights in place). Paper: Meng et al. 2024, arXiv 2404.02948.
- OLoRA: A, B from a QR decomposition of W0; base W0 − B·A. Paper: Büyükakyüz 2024,
  arXiv 2406.01775.
"""
from __future__ import annotations


def peft_config(cfg, init="default", use_dora: bool = False):
    from peft import LoraConfig

    return LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                      target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM",
                      init_lora_weights=True if init == "default" else init, use_dora=use_dora)


def build(model, cfg, init="default", use_dora: bool = False):
    from peft import get_peft_model

    return get_peft_model(model, peft_config(cfg, init, use_dora))


def lora_count(model, cfg, targets) -> int:
    """r·(in + out) per adapted linear layer."""
    return sum(cfg.r * (m.in_features + m.out_features) for _, m in targets)


def dora_count(model, cfg, targets) -> int:
    """LoRA plus one magnitude per output feature."""
    return lora_count(model, cfg, targets) + sum(m.out_features for _, m in targets)
