"""AdaLoRA: SVD-form adapters P·Λ·Q whose rank budget is reallocated during training by an
importance score, from ``init_r`` per module down to an average of ``r``.
Paper: Zhang et al. 2023, arXiv 2303.10512. Wraps peft's AdaLoraConfig / RankAllocator.

peft computes AdaLoRA's orthogonality regulariser only when the model returns a loss; spinlora's
objectives compute log-probs themselves, so ``regularizer`` adds the same term (peft
``AdaLoraModel.forward``) and ``on_step`` calls ``update_and_allocate`` after each step.
"""
from __future__ import annotations

import torch


def build(model, cfg, total_steps: int = 1000):
    from peft import AdaLoraConfig, get_peft_model

    tinit, tfinal = max(1, total_steps // 10), max(1, total_steps // 5)
    if tinit >= total_steps - tfinal:
        tinit, tfinal = 0, 0
    return get_peft_model(model, AdaLoraConfig(
        init_r=cfg.init_r, target_r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules), total_step=max(total_steps, 2), tinit=tinit,
        tfinal=tfinal, deltaT=1, task_type="CAUSAL_LM"))


def set_total_steps(model, total: int) -> None:
    """The schedule (warm-up, pruning, final phase) spans the current training stage."""
    c = model.peft_config["default"]
    c.total_step = max(total, 2)
    c.tinit, c.tfinal = max(1, total // 10), max(1, total // 5)
    if c.tinit >= c.total_step - c.tfinal:
        c.tinit, c.tfinal = 0, 0
    model.base_model.rankallocator.peft_config = c


def on_step(model, step: int) -> None:
    model.base_model.update_and_allocate(step)


def regularizer(model) -> torch.Tensor:
    c = model.peft_config["default"]
    terms = []
    for n, p in model.named_parameters():
        if p.requires_grad and ("lora_A" in n or "lora_B" in n):
            cov = p @ p.T if "lora_A" in n else p.T @ p
            terms.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], device=p.device)))
    return c.orth_reg_weight * torch.stack(terms).mean()


def count(model, cfg, targets) -> int:
    """A: init_r·in, B: out·init_r, E: init_r per module (the mask prunes, the tensors stay)."""
    return sum(cfg.init_r * (m.in_features + m.out_features + 1) for _, m in targets)
