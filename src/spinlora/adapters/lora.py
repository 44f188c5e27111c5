"""LoRA: W = W0 + (alpha/r)·B·A with B = 0 at init (Hu et al. 2021, arXiv 2106.09685).

Paper: https://arxiv.org/abs/2106.09685. Wraps peft's implementation.
"""
from __future__ import annotations

from ..config import LoraConfig


def peft_config(cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                          target_modules=list(cfg.target_modules), bias="none",
                          task_type="CAUSAL_LM")
