"""Prompt-learning methods (peft): trainable virtual tokens instead of weight changes.

- ``prompt``: prompt tuning, soft prompt embeddings prepended to the input. Paper: Lester et al.
  2021, arXiv 2104.08691.
- ``prefix``: prefix tuning, trainable keys/values at every layer through an MLP
  reparametrisation. Paper: Li & Liang 2021, arXiv 2101.00190.
- ``ptuning``: P-tuning, virtual token embeddings from an MLP prompt encoder. Paper: Liu et al.
  2021, arXiv 2103.10385.
- ``ptuning_v2``: P-tuning v2, deep prompts (keys/values at every layer) trained directly,
  no reparametrisation. Paper: Liu et al. 2022, arXiv 2110.07602.

They change the output at init (the virtual tokens are random), cannot be merged, and the
decoder cannot run without peft's wrapper, so spinlora uses its full-sequence paths for them.
Prefix methods put their keys/values in the KV cache: peft refuses gradient checkpointing there.
"""
from __future__ import annotations


def build(model, cfg, kind: str):
    from peft import (PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig,
                      get_peft_model)

    n = cfg.num_virtual_tokens
    if kind == "prompt":
        pc = PromptTuningConfig(num_virtual_tokens=n, task_type="CAUSAL_LM")
    elif kind == "ptuning":
        pc = PromptEncoderConfig(num_virtual_tokens=n, encoder_hidden_size=cfg.encoder_hidden_size,
                                 task_type="CAUSAL_LM")
    else:
        pc = PrefixTuningConfig(num_virtual_tokens=n, prefix_projection=(kind == "prefix"),
                                encoder_hidden_size=cfg.encoder_hidden_size, task_type="CAUSAL_LM")
    return get_peft_model(model, pc)


def _dims(model):
    c = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    return c.hidden_size, c.num_hidden_layers, kv * head_dim


def count(model, cfg, kind: str) -> int:
    d, layers, kv = _dims(model)
    n, h = cfg.num_virtual_tokens, cfg.encoder_hidden_size
    if kind == "prompt":
        return n * d
    if kind == "ptuning":  # embedding + MLP d -> h -> h -> d
        return n * d + (d * h + h) + (h * h + h) + (h * d + d)
    out = layers * 2 * kv  # keys and values of every layer
    if kind == "ptuning_v2":
        return n * out
    # prefix: embedding + MLP kv -> h -> out (peft's token_dim is the key/value width under GQA)
    return n * kv + (kv * h + h) + (h * out + out)
