"""WeightLoRA: LoRA with one trainable scalar ω_i per adapted layer; after training, keep the
top-K adapters by |ω_i|·‖B_i A_i‖_F and switch the rest off.

h = W0 x + ω_i · s · B_i A_i x, ω_i = 1 at init (so the output is unchanged: B = 0). ``finish``
folds ω_i into B_i for the kept adapters and zeroes and freezes the others, so what is saved is a
plain peft LoRA adapter, and a following SPIN stage trains only the kept ones.
Paper: Veprikov et al. 2025, "WeightLoRA: Keep Only Necessary Adapters", arXiv 2506.02724.
peft 0.21 has no WeightLoRA: plain LoRA is attached and ω is a forward hook on each lora_B.
"""
from __future__ import annotations

import torch

from . import lora


def _layers(model):
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, LoraLayer) and "default" in m.lora_A]


def build(model, cfg):
    peft_model = lora.build(model, cfg)
    for _, m in _layers(peft_model):
        m.weightlora_omega = torch.nn.Parameter(torch.ones((), device=m.lora_B["default"].weight.device))
        m._weightlora_hook = m.lora_B["default"].register_forward_hook(
            lambda mod, args, out, layer=m: out * layer.weightlora_omega)
    return peft_model


@torch.no_grad()
def finish(model, cfg) -> dict | None:
    """Select the top-K adapters, fold ω into B, switch the others off. Returns the selection
    (written into the stage's result.json), or None if there is nothing to select."""
    layers = [(n, m) for n, m in _layers(model) if hasattr(m, "weightlora_omega")]
    if not layers:
        return None
    scores = {}
    for n, m in layers:
        ba = m.lora_B["default"].weight @ m.lora_A["default"].weight
        scores[n] = float(m.weightlora_omega.abs() * m.scaling["default"] * ba.norm())
    k = cfg.keep_top_k if cfg.keep_top_k is not None else max(1, len(layers) // 2)
    kept = set(sorted(scores, key=scores.get, reverse=True)[:k])
    for n, m in layers:
        if n in kept:
            m.lora_B["default"].weight.mul_(m.weightlora_omega)
        else:
            for p in (m.lora_A["default"].weight, m.lora_B["default"].weight):
                p.zero_()
                p.requires_grad_(False)
        m._weightlora_hook.remove()
        del m._weightlora_hook
        del m.weightlora_omega
    return {"kept": sorted(kept), "k": k, "of": len(layers), "scores": scores}


def count(model, cfg, targets) -> int:
    return lora.lora_count(model, cfg, targets) + len(targets)
