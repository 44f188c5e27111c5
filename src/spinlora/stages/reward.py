"""Reward model (``spinlora reward``): Bradley–Terry on preference pairs.

    spinlora reward configs/demo.yaml reward.data=pairs.jsonl --output-dir runs/rm
    spinlora reward configs/demo.yaml --output-dir runs/rm-gsm8k \\
        reward.data=runs/demo/spin/iter_1/generations.jsonl \\
        reward.chosen_field=gold reward.rejected_field=generated   # gold ≻ a wrong generation

P(y_w ≻ y_l | x) = σ(r(x, y_w) − r(x, y_l)); the loss is −log σ(r_w − r_l) (Bradley & Terry
1952; as in Stiennon et al. 2020 and Ouyang et al. 2022, arXiv 2203.02155). r is the base model
with its LM head replaced by a scalar head (``AutoModelForSequenceClassification``,
num_labels=1), read at the last token of the chat-formatted prompt + answer. LoRA
(``adapter.r``, ``alpha``, ``target_modules``; DoRA with ``adapter.method=dora``) trains the body
through peft's SEQ_CLS task, which trains the head in full and saves both in plain peft format
(``reward/adapter``). Training goes through the shared loop, so the run has the same accounting,
logs and progress as SFT and SPIN.

Pairs come in the DPO stage's format (``reward.data``, fields as ``dpo.*_field``). For GSM8K the
data makes its own pairs: a SPIN iteration's ``generations.jsonl`` holds the gold answer and the
model's answer, which ``spin.correct_pairs: drop`` keeps only when it is wrong. The result
reports pairwise accuracy on ``reward.heldout`` held-out pairs with its standard error and n,
before training (the random head) and after.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import dist, rundir
from ..accounting import Accountant, MemoryMeter, count_parameters, environment
from ..config import RunConfig
from ..data import ChatFormat, DataError
from ..evaluate.choice import stderr
from ..reward_model import (load_reranker, load_reward_model, load_trained,  # noqa: F401
                            pair_rewards, rewards, score_texts)
from ..train import MetricsLog, Objective, train_loop
from .dpo import load_pairs, split_heldout


@dataclass
class RewardPair:
    chosen: list[int]  # prompt + preferred answer (chat template)
    rejected: list[int]
    prompt_len: int = 0  # leading tokens both share (the prompt); 0: each sequence runs whole


def _rewards(model, items: list[RewardPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    return pair_rewards(model, [p.chosen for p in items], [p.rejected for p in items],
                        [p.prompt_len for p in items], pad_id)


def bradley_terry(pad_id: int) -> Objective:
    def loss(model, items: list[RewardPair]):
        rw, rl = _rewards(model, items, pad_id)
        margin = (rw - rl)
        return -F.logsigmoid(margin).sum(), {"accuracy": (margin.detach() > 0).float().sum(),
                                              "margin": margin.detach().sum()}

    return Objective(loss=loss, weight=lambda items: float(len(items)),
                     tokens=lambda items: sum(len(p.chosen) + len(p.rejected) for p in items),
                     length=lambda p: max(len(p.chosen), len(p.rejected)),
                     metric_keys=("accuracy", "margin"))


@torch.inference_mode()
def pairwise_accuracy(model, pairs: list[RewardPair], pad_id: int, batch_size: int) -> dict:
    """Share of pairs whose chosen answer gets the higher reward, with its standard error."""
    model.eval()
    wins = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        rw, rl = _rewards(model, chunk, pad_id)
        wins += (rw > rl).tolist()
    n = len(wins)
    acc = sum(wins) / max(n, 1)
    return {"n": n, "accuracy": acc, "accuracy_stderr": stderr(acc, n)}


def _tokenize(rows: list[dict], fmt: ChatFormat, max_length: int) -> tuple[list[RewardPair], int]:
    pairs, dropped = [], 0
    for r in rows:
        p = fmt.prompt_ids(r["prompt"])
        c, j = p + fmt.answer_ids(r["chosen"]), p + fmt.answer_ids(r["rejected"])
        if max(len(c), len(j)) > max_length:
            dropped += 1  # cutting would hide the answers' ends, where they differ most
            continue
        pairs.append(RewardPair(c, j, len(p)))
    return pairs, dropped


def run_reward(cfg: RunConfig) -> dict:
    """Train a reward model on ``cfg.reward``'s pairs into ``cfg.output_dir``/reward."""
    if not cfg.reward.data:
        raise DataError("spinlora reward needs preference pairs: reward.data=FILE_OR_HUB_ID")
    rows = load_pairs(cfg.reward, cfg.data)  # read and checked before any model is loaded
    out = rundir.prepare(cfg)
    try:
        try:
            model, tok = load_reward_model(cfg)
        except BaseException:
            rundir.abandon(out)  # a model that cannot be loaded leaves no half-made folder
            raise
        rundir.commit(out)
        return _train_reward(cfg, out, rows, model, tok)
    finally:
        rundir.release(out)


def _train_reward(cfg: RunConfig, out, rows, model, tok) -> dict:
    summary = {rundir.MARKER: 1, "status": "running", "stage": "reward",
               "environment": environment()}
    rundir.write_json(out / "run.json", summary)
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    acct = Accountant(device, MemoryMeter(device).baseline)
    fmt = ChatFormat.from_config(tok, cfg.data)
    train_rows, held_rows = split_heldout(rows, cfg.reward.heldout, cfg.data.seed, cfg.reward.pairs)
    train, dropped = _tokenize(train_rows, fmt, cfg.data.max_length)
    held, _ = _tokenize(held_rows, fmt, cfg.data.max_length)
    if not train:
        raise DataError(f"reward.data {cfg.reward.data}: no pair left to train on "
                        f"({dropped} longer than data.max_length={cfg.data.max_length})")
    mb = cfg.train.micro_batch_size
    before = pairwise_accuracy(model, held, tok.pad_token_id, mb) if held else None
    part = rundir.begin(out / "reward")
    log = MetricsLog(part / "metrics.jsonl", cfg.train.report_to, "reward")
    try:
        records = train_loop(model, train, bradley_terry(tok.pad_token_id), cfg.train,
                             cfg.reward.lr, cfg.reward.epochs, acct, log, cfg.seed, "reward")
    finally:
        log.close()
    with acct.phase("save"):
        if dist.is_main():
            model.save_pretrained(part / "adapter")
            tok.save_pretrained(part / "adapter")
    after = pairwise_accuracy(model, held, tok.pad_token_id, mb) if held else None
    result = {"stage": "reward", "data": cfg.reward.data, "pairs": len(train),
              "dropped_overlong": dropped, "heldout_before": before, "heldout_after": after,
              "steps": len(records), "loss_first": records[0]["loss"],
              "loss_last": records[-1]["loss"], "parameters": count_parameters(model),
              "accounting": acct.summary()}
    rundir.finish(part, result)
    summary.update(status="ok", wall_seconds=round(time.perf_counter() - t0, 2),
                   heldout_after=after)
    rundir.write_json(out / "run.json", summary)
    if after:
        print(f"[spinlora] reward model: held-out pairwise accuracy {after['accuracy']:.3f} ± "
              f"{after['accuracy_stderr']:.3f} (n={after['n']}; before training "
              f"{before['accuracy']:.3f})")
    return result


