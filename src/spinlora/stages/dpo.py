"""DPO on the adapter (Rafailov et al. 2023, arXiv 2305.18290) from preference pairs in data.

    spinlora dpo configs/demo.yaml --adapter runs/demo/sft/adapter dpo.data=pairs.jsonl
    spinlora run configs/demo.yaml stages=[sft,dpo,eval] dpo.data=pairs.jsonl

SPIN is DPO whose chosen answer is the gold one and whose rejected answer is the model's own
generation. This stage is the same machinery with both answers read from a file: the pairs are
SPIN's ``Pair``, the reference log-probs come from SPIN's ``reference_pass`` (the adapter as the
stage starts, θ0 + Δθ, once, in the one model copy), and the loss is SPIN's objective with
``dpo.loss`` (sigmoid = DPO, sigmoid_nll, dpop, ipo). Step 0 must give the loss's step-0 value
(ln 2 for the sigmoid family).

A row holds ``prompt``, ``chosen`` and ``rejected`` (``dpo.*_field``); chosen / rejected may be
strings or chat-message lists as on the Hub (the last message's content is the answer; a
prompt given as messages uses its last user message). ``dpo.heldout`` pairs are kept apart: the
result reports their preference accuracy before and after (implicit reward margin > 0, and the
policy's per-token log-prob of chosen above rejected's).
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from .. import adapters
from ..accounting import Accountant, count_parameters
from ..config import DataConfig, DpoConfig, RunConfig
from ..data import ChatFormat, DataError, read_rows
from ..losses import step0_value
from ..scoring import score_answers
from ..train import MetricsLog, train_loop
from .spin import Pair, reference_pass, spin_objective


def _text(value, where: str, role: str | None = None) -> str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        msgs = [m for m in value if role is None or m.get("role") == role]
        if msgs and isinstance(msgs[-1].get("content"), str):
            return msgs[-1]["content"]
    raise DataError(f"{where}: expected a non-empty string or a list of chat messages")


def load_pairs(cfg: DpoConfig, data: DataConfig) -> list[dict]:
    """``{prompt, chosen, rejected}`` text rows from ``cfg.data`` (a file, folder or Hub id)."""
    rows = []
    for where, r in _raw_rows(cfg):
        if not isinstance(r, dict):
            raise DataError(f"{where}: expected an object with prompt, chosen and rejected")
        missing = [k for k in (cfg.prompt_field, cfg.chosen_field, cfg.rejected_field)
                   if k not in r]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing} (present: {sorted(r)}); set "
                            "dpo.prompt_field / dpo.chosen_field / dpo.rejected_field")
        rows.append({"prompt": _text(r[cfg.prompt_field], where, "user"),
                     "chosen": _text(r[cfg.chosen_field], where),
                     "rejected": _text(r[cfg.rejected_field], where)})
    if not rows:
        raise DataError(f"dpo.data {cfg.data}: no preference pairs")
    return rows


def _raw_rows(cfg: DpoConfig) -> list[tuple[str, object]]:
    path = Path(cfg.data).expanduser()
    if path.is_file():
        return read_rows(path)
    if cfg.data.startswith((".", "/", "~")) or path.suffix in (".jsonl", ".json"):
        raise DataError(f"dpo.data {cfg.data} not found: a jsonl/json file, a dataset folder or "
                        "a Hub id of preference pairs")
    import datasets

    try:
        ds = datasets.load_dataset(cfg.data, split=cfg.split)
        return [(f"{cfg.data} row {i + 1}", r) for i, r in enumerate(ds)]
    except Exception as e:  # offline, missing split, ...
        raise DataError(f"could not load dpo.data {cfg.data!r} (split {cfg.split!r}): {e}") from None


def split_heldout(rows: list, k: int, seed: int, limit: int | None = None) -> tuple[list, list]:
    """(training rows, held-out rows): ``k`` rows held out by a seeded draw; the training rows
    keep their file order, the first ``limit`` of them (None: all)."""
    held = set(random.Random(seed).sample(range(len(rows)), min(k, len(rows))))
    return ([r for i, r in enumerate(rows) if i not in held][:limit],
            [r for i, r in enumerate(rows) if i in held])


def build_pairs(rows: list[dict], fmt: ChatFormat, data: DataConfig) -> tuple[list[Pair], int]:
    """Token pairs; a pair longer than ``data.max_length`` is dropped or has its answers cut
    (``data.overlong``). Returns (pairs, dropped)."""
    pairs, dropped = [], 0
    for r in rows:
        p = fmt.prompt_ids(r["prompt"])
        room = data.max_length - len(p)
        c, j = fmt.answer_ids(r["chosen"]), fmt.answer_ids(r["rejected"])
        if len(c) > room or len(j) > room:
            if data.overlong == "drop" or room < 1:
                dropped += 1
                continue
            c, j = c[:room], j[:room]
        pairs.append(Pair(p, c, j))
    return pairs, dropped


NOISE = 1e-3  # nats: summed log-probs from two batchings differ by ~1e-5; not a preference


@torch.inference_mode()
def preference_accuracy(model, pairs: list[Pair], pad_id: int, batch_size: int) -> dict:
    """On pairs whose reference log-probs are set: the share with implicit reward margin above
    float noise (DPO's reward accuracy) and the share where the policy gives chosen a higher log-prob per
    token than rejected."""
    was_training = model.training
    model.eval()
    reward, per_token = [], []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        lp, n, _ = score_answers(model, [p.prompt_ids for p in chunk],
                                 [[p.real_ids, p.gen_ids] for p in chunk], pad_id)
        lp, n = lp.view(-1, 2).tolist(), n.view(-1, 2).tolist()
        for p, (c, j), (nc, nj) in zip(chunk, lp, n):
            reward.append((c - p.ref_real) - (j - p.ref_gen) > NOISE)
            per_token.append(c / max(nc, 1) > j / max(nj, 1))
    if was_training:
        model.train()
    k = max(len(pairs), 1)
    return {"n": len(pairs), "reward_accuracy": sum(reward) / k,
            "prefers_chosen": sum(per_token) / k}


def run_dpo(cfg: RunConfig, model, tokenizer, fmt: ChatFormat, rows: list[dict], out: Path,
            acct: Accountant, init_path: Path | None = None) -> dict:
    """Train the adapter of ``model`` on the preference ``rows``; save into ``out``."""
    d, pad = cfg.dpo, tokenizer.pad_token_id
    train_rows, held_rows = split_heldout(rows, d.heldout, cfg.data.seed, d.pairs)
    pairs, dropped = build_pairs(train_rows, fmt, cfg.data)
    held, _ = build_pairs(held_rows, fmt, cfg.data)
    if not pairs:
        raise DataError(f"dpo.data {d.data}: no pair left to train on ({len(train_rows)} rows, "
                        f"{dropped} longer than data.max_length={cfg.data.max_length})")
    units = reference_pass(model, pairs, pad, acct, cfg.train.micro_batch_size)
    if held:
        reference_pass(model, held, pad, acct, cfg.train.micro_batch_size)
    before = preference_accuracy(model, held, pad, cfg.train.micro_batch_size) if held else None
    log = MetricsLog(out / "metrics.jsonl", cfg.train.report_to, "dpo")
    try:
        records = train_loop(model, pairs, spin_objective(pad, d.beta, d), cfg.train, d.lr,
                             d.epochs, acct, log, cfg.seed, "dpo", extra={"beta": d.beta},
                             method=cfg.adapter.method, units=units)
    finally:
        log.close()
    with acct.phase("save"):
        adapters.save(model, cfg.adapter, out / "adapter", init_path)
    after = preference_accuracy(model, held, pad, cfg.train.micro_batch_size) if held else None
    step0, expected = records[0]["pref_loss"], step0_value(d.loss, d.beta)
    return {
        "stage": "dpo", "data": d.data, "loss": d.loss, "beta": d.beta, "lr": d.lr,
        "pairs": len(pairs), "dropped_overlong": dropped, "heldout_pairs": len(held),
        "steps": len(records), "step0_pref_loss": step0, "step0_expected": expected,
        "step0_ok": abs(step0 - expected) < 1e-3 * max(1.0, expected),
        "loss_first": records[0]["loss"], "loss_last": records[-1]["loss"],
        "margin_last": records[-1]["margin"], "heldout_before": before, "heldout_after": after,
        "parameters": count_parameters(model), "method": cfg.adapter.method,
    }
