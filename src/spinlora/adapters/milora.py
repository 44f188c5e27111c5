"""MiLoRA: LoRA initialised from the *minor* singular components of W0 (PiSSA uses the major ones).

W0 = U S Vᵀ; with the r smallest singular triplets, B = U_r √S_r / √s and A = √S_r V_rᵀ / √s
(s = alpha / r, peft's scaling), and the base becomes W0 − s·B·A, so the output is unchanged at
init. peft 0.21 has no MiLoRA: plain LoRA is attached, then A, B and W are set here.
Paper: Wang et al. 2024, "MiLoRA: Harnessing Minor Singular Components for Parameter-Efficient
LLM Fine-tuning", arXiv 2406.09044.
"""
from __future__ import annotations

import torch

from . import lora


@torch.no_grad()
def build(model, cfg):
    from peft.tuners.lora import LoraLayer

    peft_model = lora.build(model, cfg)
    for module in peft_model.modules():
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        base = module.get_base_layer()
        if not isinstance(base, torch.nn.Linear):
            raise TypeError("MiLoRA needs full-precision nn.Linear base layers (not quantised)")
        w = base.weight.float()
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        r, scale = cfg.r, module.scaling["default"]
        u, s, vh = u[:, -r:], s[-r:], vh[-r:]
        b = u * s.sqrt() / scale ** 0.5
        a = s.sqrt()[:, None] * vh / scale ** 0.5
        module.lora_A["default"].weight.copy_(a)
        module.lora_B["default"].weight.copy_(b)
        base.weight.copy_((w - scale * b @ a).to(base.weight.dtype))
    return peft_model
