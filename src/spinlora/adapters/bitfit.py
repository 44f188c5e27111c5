"""BitFit: train only the bias terms. Paper: Ben Zaken et al. 2022, arXiv 2106.10199.
Not in peft: written here (freeze everything, unfreeze biases).

Llama-style models (SmolLM2, Llama) have no bias tensors, so BitFit would train nothing: that is
an error, unless ``adapter.add_biases`` is set, which adds zero biases to the attention and MLP
linear layers first (the output is unchanged; it is what loading with ``attention_bias=True,
mlp_bias=True`` does).
"""
from __future__ import annotations

import torch


class BitFitError(ValueError):
    pass


def add_zero_biases(model) -> int:
    """Give every linear layer inside the decoder blocks a zero bias; returns how many."""
    added = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and m.bias is None and ".layers." in f".{name}":
            m.bias = torch.nn.Parameter(torch.zeros(m.out_features, device=m.weight.device,
                                                    dtype=m.weight.dtype))
            added += 1
    return added


def build(model, cfg):
    if cfg.add_biases:
        add_zero_biases(model)
    biases = [p for n, p in model.named_parameters() if n.endswith(".bias")]
    if not biases:
        raise BitFitError(
            f"{type(model).__name__} has no bias parameters (Llama-style), so BitFit would train "
            "nothing. Set adapter.add_biases=true to add zero biases to the attention and MLP "
            "layers first (output unchanged), or use a model with biases (e.g. Qwen2: q/k/v)")
    for n, p in model.named_parameters():
        p.requires_grad_(n.endswith(".bias"))
    return model


def count(model, cfg, targets) -> int:
    """Existing biases, plus (with add_biases) one per output of every bias-free decoder linear."""
    added = sum(m.out_features for n, m in model.named_modules()
                if cfg.add_biases and isinstance(m, torch.nn.Linear) and m.bias is None
                and ".layers." in f".{n}")
    return added + sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias"))
