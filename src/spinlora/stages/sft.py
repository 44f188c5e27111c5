"""SFT stage: minimise -log p_θ(y|x) over answer tokens only, with the adapter as θ - θ0.

    spinlora sft configs/demo.yaml            # or: from spinlora import run; run(cfg) with stages [sft]

Output (``RUN/sft``): ``adapter/`` (plain peft), ``metrics.jsonl`` (one line per step),
``result.json`` (counts, parameters, time, memory, tokens/s).
"""
from __future__ import annotations

from pathlib import Path

from transformers.integrations.neftune import activate_neftune, deactivate_neftune

from .. import adapters
from ..accounting import Accountant, count_parameters
from ..config import RunConfig
from ..data import Example, collate
from ..generate import common_prefix
from ..losses import sft_loss_sum
from ..scoring import answer_logps, score_answers
from ..train import MetricsLog, Objective, train_loop


SHARED_MIN = 8  # prompt tokens a micro-batch must share for the prefix to run once
# rows a micro-batch needs for that to pay: on 2 AVX2 cores (fp32, SmolLM2, SVAMP rows) the
# shared pass ran 0.79-0.87x the whole rows' speed at 2 rows, 1.00-1.10x at 4, 1.02-1.23x at 8
# and 1.19-1.26x at 16 (benchmarks/train_speed.py --sides float32/whole,float32)
SHARED_ROWS = 4


def sft_logps(model, items: list[Example], pad_id: int, share_prefix: bool = True):
    """Summed answer log-probs and answer tokens of each example (the SFT loss's terms).

    Where a micro-batch of ``SHARED_ROWS`` rows or more shares ``SHARED_MIN`` prompt tokens or
    more (a chat template's system prompt: 20 of the ~85 tokens of a SmolLM2 SVAMP row), that
    prefix runs once, at batch 1, and each row's rest (its question, then its answer) runs on the
    prefix's KV cache (``score_answers``, the pass SPIN's pairs take; where the decoder cannot
    run alone it runs the same rows whole): under causal attention the same log-probs and
    gradients (tested) from fewer token passes. Otherwise, and with ``share_prefix`` off, every
    row runs whole (``answer_logps``)."""
    prompts = [e.prompt_ids for e in items]
    shared = common_prefix(prompts) if share_prefix and len(prompts) >= SHARED_ROWS else 0
    if shared >= SHARED_MIN:
        sums, counts, _ = score_answers(
            model, [prompts[0][:shared]], [[p[shared:] + e.answer_ids
                                            for p, e in zip(prompts, items)]],
            pad_id, skip=[[len(p) - shared for p in prompts]])
        return sums, counts
    batch = collate([(e.prompt_ids, e.answer_ids) for e in items], pad_id)
    return answer_logps(model, batch.to(next(model.parameters()).device))


def sft_objective(pad_id: int, share_prefix: bool = True) -> Objective:
    """Token-level NLL; each optimizer step averages over all answer tokens of its batch.
    ``share_prefix``: a micro-batch's common prompt prefix runs once (``sft_logps``)."""

    def loss(model, items: list[Example]):
        seq_logps, counts = sft_logps(model, items, pad_id, share_prefix)
        total, _ = sft_loss_sum(seq_logps, counts)
        return total, {}

    return Objective(loss=loss,
                     weight=lambda items: float(sum(len(e.answer_ids) for e in items)),
                     tokens=lambda items: sum(len(e.prompt_ids) + len(e.answer_ids) for e in items),
                     length=lambda e: len(e.prompt_ids) + len(e.answer_ids), metric_keys=())


def run_sft(cfg: RunConfig, model, tokenizer, examples: list[Example], out: Path,
            acct: Accountant, init_path: Path | None = None,
            heldout: list[Example] | None = None, fmt=None, epoch_examples=None) -> dict:
    """Train the adapter of ``model`` (a PeftModel) on ``examples``; save into ``out``.
    With ``train.early_stop_every`` and ``heldout`` rows, stop when the held-out metric falls
    and keep the best state (``early_stop`` in the result). ``epoch_examples``: later epochs'
    examples (``start.sft_epochs``; their counts go to ``drawn_each_epoch``)."""
    log = MetricsLog(out / "metrics.jsonl", cfg.train.report_to, "sft")
    watch = EarlyStop(cfg, model, tokenizer, fmt, heldout, acct) if (
        cfg.train.early_stop_every and heldout) else None
    noisy = cfg.train.neftune_alpha > 0
    hook = activate_neftune(model, cfg.train.neftune_alpha) if noisy else None
    try:
        objective = sft_objective(tokenizer.pad_token_id, cfg.train.share_prefix and not noisy)
        records = train_loop(model, examples, objective, cfg.train, cfg.train.lr,
                             cfg.train.epochs, acct, log, cfg.seed, "sft",
                             method=cfg.adapter.method, on_step=watch,
                             epoch_items=epoch_examples)
    finally:
        log.close()
        if hook is not None:  # the saved adapter and every later stage see clean embeddings
            deactivate_neftune(model, hook)
    if watch:
        watch.restore_best()
    finish = adapters.get(cfg.adapter.method).finish
    selection = finish(model, cfg.adapter) if finish else None
    with acct.phase("save"):
        adapters.save(model, cfg.adapter, out / "adapter", init_path)
    return {
        "stage": "sft", "method": cfg.adapter.method, "examples": len(examples),
        "steps": len(records), **({"selection": selection} if selection else {}),
        "loss_first": records[0]["loss"], "loss_last": records[-1]["loss"],
        **({"neftune_alpha": cfg.train.neftune_alpha} if noisy else {}),
        "parameters": count_parameters(model),
        **({"early_stop": watch.summary()} if watch else {}),
        **({"drawn_each_epoch": epoch_examples.drawn} if epoch_examples else {}),
    }


class EarlyStop:
    """SFT early stopping on a held-out metric (``train.early_stop_*``): measured every N steps,
    the best state kept in memory (the trainable tensors only), training stopped at the first
    fall."""

    def __init__(self, cfg: RunConfig, model, tokenizer, fmt, heldout, acct):
        from .spin import _METRIC_KEY, _heldout

        self.cfg, self.model, self.tok, self.fmt, self.heldout, self.acct = (
            cfg, model, tokenizer, fmt, heldout, acct)
        self.measure, self.key = _heldout, _METRIC_KEY[cfg.train.early_stop_metric]
        self.reranker = None
        if cfg.train.early_stop_metric == "heldout_reward":
            from ..reward_model import load_reranker

            self.reranker = load_reranker(cfg.spin.reward_model, cfg)
        self.history, self.best, self.best_state, self.stopped = [], None, None, None

    def __call__(self, step: int) -> bool:
        if (step + 1) % self.cfg.train.early_stop_every:
            return False
        r = self.measure(self.model, self.tok, self.fmt, self.heldout, self.cfg, self.acct,
                         f"sft step {step + 1}", self.reranker)
        value = r[self.key]
        self.history.append({"step": step + 1, self.cfg.train.early_stop_metric: value})
        self.model.train()
        if self.best is None or value > self.best["value"]:  # ties keep the earlier state
            self.best = {"step": step + 1, "value": value}
            self.best_state = adapters.snapshot(self.model)
            return False
        if value < self.best["value"]:
            self.stopped = step + 1
            return True
        return False

    def restore_best(self) -> None:
        """Put the best measured state back when training ended below it."""
        if self.stopped and self.best_state is not None:
            adapters.restore(self.model, self.best_state)

    def summary(self) -> dict:
        return {"metric": self.cfg.train.early_stop_metric, "every": self.cfg.train.early_stop_every,
                "history": self.history, "best_step": (self.best or {}).get("step"),
                "stopped_at": self.stopped}
