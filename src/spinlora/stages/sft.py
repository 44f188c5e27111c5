"""SFT stage: minimise -log p_θ(y|x) over answer tokens only, with the adapter as θ - θ0.

    spinlora sft configs/demo.yaml            # or: from spinlora import run; run(cfg) with stages [sft]

Output (``RUN/sft``): ``adapter/`` (plain peft), ``metrics.jsonl`` (one line per step),
``result.json`` (counts, parameters, time, memory, tokens/s).
"""
from __future__ import annotations

from pathlib import Path

from .. import adapters, dist
from ..accounting import Accountant, count_parameters
from ..config import RunConfig
from ..data import Example, collate
from ..losses import sft_loss_sum
from ..scoring import answer_logps
from ..train import MetricsLog, Objective, train_loop


def sft_objective(pad_id: int) -> Objective:
    """Token-level NLL; each optimizer step averages over all answer tokens of its batch."""

    def loss(model, items: list[Example]):
        device = next(model.parameters()).device
        batch = collate([(e.prompt_ids, e.answer_ids) for e in items], pad_id).to(device)
        seq_logps, counts = answer_logps(model, batch)
        total, _ = sft_loss_sum(seq_logps, counts)
        return total, {}

    return Objective(loss=loss,
                     weight=lambda items: float(sum(len(e.answer_ids) for e in items)),
                     tokens=lambda items: sum(len(e.prompt_ids) + len(e.answer_ids) for e in items),
                     length=lambda e: len(e.prompt_ids) + len(e.answer_ids), metric_keys=())


def run_sft(cfg: RunConfig, model, tokenizer, examples: list[Example], out: Path,
            acct: Accountant, init_path: Path | None = None) -> dict:
    """Train the adapter of ``model`` (a PeftModel) on ``examples``; save into ``out``."""
    log = MetricsLog(out / "metrics.jsonl", cfg.train.report_to, "sft")
    try:
        records = train_loop(model, examples, sft_objective(tokenizer.pad_token_id), cfg.train,
                             cfg.train.lr, cfg.train.epochs, acct, log, cfg.seed, "sft",
                             method=cfg.adapter.method)
    finally:
        log.close()
    finish = adapters.get(cfg.adapter.method).finish
    selection = finish(model, cfg.adapter) if finish else None
    with acct.phase("save"):
        if dist.is_main():
            adapters.save(model, cfg.adapter, out / "adapter", init_path)
    return {
        "stage": "sft", "method": cfg.adapter.method, "examples": len(examples),
        "steps": len(records), **({"selection": selection} if selection else {}),
        "loss_first": records[0]["loss"], "loss_last": records[-1]["loss"],
        "parameters": count_parameters(model),
    }
