"""What every run does before its stages, shared by the pipeline and the memory planner: the
SFT set (with the rows held out of it) and the adapter the stages train."""
from __future__ import annotations

from pathlib import Path

from . import adapters, dist
from .config import RunConfig
from .data import ChatFormat, build_examples, load_rows, subset


def sft_set(cfg: RunConfig, fmt: ChatFormat):
    """The training split's rows, the indices of the SFT subset and of the rest (held-out rows
    come from there), the SFT examples and their counts."""
    rows = load_rows(cfg.data.train, cfg.data, "train")
    chosen = subset(list(range(len(rows))), cfg.data.sft_examples, cfg.data.seed)
    rest = sorted(set(range(len(rows))) - set(chosen))
    sft_examples, counts = build_examples([rows[i] for i in chosen], fmt, cfg.data)
    return rows, chosen, rest, sft_examples, counts


def attach_adapter(cfg: RunConfig, model, out: Path):
    """The adapter the stages train: fresh, or ``cfg.sft_adapter`` to continue from (its own
    method and shapes). Returns (model, init_path): where a PiSSA-style method saved the state
    it starts from, else None."""
    init_path = None
    if cfg.sft_adapter:
        cfg.adapter = adapters.saved_config(cfg.sft_adapter, cfg.adapter)
    if cfg.sft_adapter and not adapters.get(cfg.adapter.method).base_from_init:
        model = adapters.load(model, cfg.sft_adapter, trainable=True)  # a peft folder
    else:
        model = adapters.attach(model, cfg.adapter)
        if adapters.get(cfg.adapter.method).base_from_init:
            # the state the method starts from gives the base model's output for evaluation
            # (and the conversion of PiSSA-style adapters to plain LoRA on the original base)
            init_path = out / "init_adapter"
            adapters.save(model, cfg.adapter, init_path)
            dist.barrier()  # the other processes read it at evaluation
        if cfg.sft_adapter:
            adapters.load_weights(model, cfg.adapter, cfg.sft_adapter)
    return model, init_path
