"""IA3: learned vectors that rescale keys, values and the MLP's inner activations, ones at init.
Paper: Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning", arXiv 2205.05638. Wraps peft's IA3Config.

Targets follow the paper (keys, values, the MLP's down projection input), whatever
``adapter.target_modules`` says.
"""
from __future__ import annotations

TARGETS = ["k_proj", "v_proj", "down_proj"]
FEEDFORWARD = ["down_proj"]


def build(model, cfg):
    from peft import IA3Config, get_peft_model

    return get_peft_model(model, IA3Config(target_modules=TARGETS, feedforward_modules=FEEDFORWARD,
                                           task_type="CAUSAL_LM"))


def count(model, cfg, targets) -> int:
    """One scale per output feature of k/v, per input feature of down_proj."""
    return sum(m.in_features if n.endswith(tuple(FEEDFORWARD)) else m.out_features
               for n, m in targets)
