"""Adapter methods: one small module per method, one registry entry each.

``attach(model, cfg)`` wraps a frozen base model in a trainable PeftModel; ``load(model, path)``
reloads a saved adapter as trainable (the trap of ``PeftModel.from_pretrained`` without
``is_trainable=True``, which trains nothing and raises nothing, is checked here).
"""
from __future__ import annotations

from pathlib import Path

from ..config import LoraConfig
from . import lora

REGISTRY = {"lora": lora.peft_config}


class AdapterError(ValueError):
    """An adapter method or saved adapter that cannot be used as asked."""


def attach(model, cfg: LoraConfig):
    """Return a PeftModel around ``model`` with a fresh adapter named 'default' (model is wrapped
    in place: peft injects layers into it)."""
    from peft import get_peft_model

    if cfg.method not in REGISTRY:
        raise AdapterError(f"unknown adapter method {cfg.method!r}; available: {sorted(REGISTRY)}")
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in names]
    if missing:
        raise AdapterError(f"lora.target_modules {missing} not found in {type(model).__name__}; "
                           f"linear layers here include: {sorted(_linear_names(model))}")
    return get_peft_model(model, REGISTRY[cfg.method](cfg))


def _linear_names(model) -> set[str]:
    import torch

    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def load(model, path: str | Path, trainable: bool = True):
    """Wrap ``model`` with the saved adapter at ``path`` (plain peft format)."""
    from peft import PeftModel

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"{path} holds no adapter_config.json: pass a folder written by "
                           "spinlora (e.g. RUN/sft/adapter) or by peft's save_pretrained")
    peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
    if trainable and not any(p.requires_grad for p in peft_model.parameters()):
        raise AdapterError(f"adapter {path} loaded with no trainable parameters")
    return peft_model
