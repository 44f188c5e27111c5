"""Bottleneck adapters after the attention output and the MLP: y + W_up σ(W_down y).
Paper: Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP", arXiv 1902.00751.

Not in peft, and AdapterHub's ``adapters`` package does not import beside transformers 5 (see
PEFT_NOTES.md): a plain-torch module wraps each target layer. W_up starts at zero, so the adapter
is the identity at init (Houlsby's near-identity initialisation); σ is GELU.
"""
from __future__ import annotations

import torch

TARGETS = ("o_proj", "down_proj")


class Bottleneck(torch.nn.Module):
    """Wraps a layer: forward(x) = y + up(gelu(down(y))), y = layer(x)."""

    def __init__(self, layer: torch.nn.Linear, size: int):
        super().__init__()
        self.base_layer = layer
        d = layer.out_features
        # fp32 over any base, as peft keeps LoRA weights: over a bf16 base AdamW's small updates
        # would round away (forward casts in and out)
        kw = dict(device=layer.weight.device, dtype=torch.float32)
        self.adapter_down = torch.nn.Linear(d, size, **kw)
        self.adapter_up = torch.nn.Linear(size, d, **kw)
        torch.nn.init.normal_(self.adapter_down.weight, std=1e-2)
        torch.nn.init.zeros_(self.adapter_down.bias)
        torch.nn.init.zeros_(self.adapter_up.weight)
        torch.nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x):
        y = self.base_layer(x)
        h = self.adapter_up(torch.nn.functional.gelu(self.adapter_down(y.to(self.adapter_down.weight.dtype))))
        return y + h.to(y.dtype)


def build(model, cfg):
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = 0
    for name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if child_name in TARGETS and not isinstance(parent, Bottleneck):
                setattr(parent, child_name, Bottleneck(child, cfg.bottleneck_size))
                wrapped += 1
    if not wrapped:
        raise ValueError(f"houlsby: no {TARGETS} layers in {type(model).__name__}")
    return model


def count(model, cfg, targets) -> int:
    m = cfg.bottleneck_size
    return sum(2 * d * m + m + d for d in (t.out_features for _, t in targets))
