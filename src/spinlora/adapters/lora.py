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

import functools

import torch


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


def fused_forward(layer, x, *args, **kwargs):
    """A peft ``lora.Linear``'s output, W0·x + s·B·A·x, with the adapter's product added by one
    ``addmm`` in the base layer's output dtype: A and s·B are cast to that dtype (tiny tensors)
    and the [rows, out] product is written once, into the base output's sum.

    peft's own forward casts x to the adapter's fp32, writes B·A·x as an fp32 [rows, out]
    tensor, scales it, adds the base output into a third fp32 tensor and casts that back: over a
    bf16 base, five passes over [rows, out] in forward and as many in backward, which on a CPU
    took about half of a LoRA-SFT step's time with LoRA on all seven projections (SmolLM2,
    SVAMP rows; ``benchmarks/train_speed.py --profile --ops 25``). The adapter's weights, their
    gradients and the optimizer state stay fp32; over a bf16 base the product runs in bf16 with
    fp32 accumulation, as a bf16 autocast runs it. Over an fp32 base the same sum in another
    order. Anything else (adapters off or merged, DoRA and the other variants, several active
    adapters, mixed-batch ``adapter_names``, hooks on A or B such as WeightLoRA's ω, which this
    product never calls) takes peft's forward."""
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if (args or kwargs or layer.disable_adapters or layer.merged or len(active) != 1
            or active[0] in layer.lora_variant
            or _hooked(layer.lora_A[active[0]]) or _hooked(layer.lora_B[active[0]])):
        return type(layer).forward(layer, x, *args, **kwargs)
    name = active[0]
    result = layer.base_layer(x)
    dt = result.dtype
    h = torch.nn.functional.linear(layer.lora_dropout[name](x.to(dt)),
                                   layer.lora_A[name].weight.to(dt))
    b = (layer.lora_B[name].weight * layer.scaling[name]).to(dt)
    out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), b.t())
    return out.view(result.shape)


def _hooked(module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks
                or torch.nn.modules.module._global_forward_hooks
                or torch.nn.modules.module._global_forward_pre_hooks)


def use_fused(model) -> int:
    """Route every peft ``lora.Linear`` of ``model`` through ``fused_forward`` (an instance
    attribute, as ``generate.packed_linears`` sets one); returns how many layers."""
    from peft.tuners.lora.layer import Linear

    n = 0
    for m in model.modules():
        if type(m) is Linear and "forward" not in vars(m):
            m.forward = functools.partial(fused_forward, m)
            n += 1
    return n
