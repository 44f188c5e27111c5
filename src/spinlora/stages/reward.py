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
from ..adapters import AdapterError
from ..config import RunConfig
from ..data import ChatFormat, DataError
from ..evaluate.choice import stderr
from ..models import load_tokenizer, pick_device, pick_dtype, resolve_model_path
from ..train import MetricsLog, Objective, train_loop
from .dpo import load_pairs, split_heldout


@dataclass
class RewardPair:
    chosen: list[int]  # prompt + preferred answer (chat template)
    rejected: list[int]


def load_reward_model(cfg: RunConfig):
    """(scalar-head model with LoRA on the body, tokenizer)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    if cfg.adapter.method not in ("lora", "dora"):
        raise AdapterError(f"the reward model trains LoRA or DoRA (adapter.method="
                           f"{cfg.adapter.method!r} is not supported here)")
    path = resolve_model_path(cfg.model.name)
    device = pick_device(cfg.model.device)
    tok = load_tokenizer(path, cfg.model.revision)
    torch.manual_seed(cfg.seed)  # the head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=pick_dtype(cfg.model.dtype, device), revision=cfg.model.revision)
    model.config.pad_token_id = tok.pad_token_id
    a = cfg.adapter
    model = get_peft_model(model, LoraConfig(
        r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=list(a.target_modules),
        task_type="SEQ_CLS", use_dora=a.method == "dora"))
    return model.to(device), tok


def rewards(model, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """r(x, y) per sequence: the scalar head on the last real token's hidden state."""
    clf = model.get_base_model()
    body = getattr(clf, clf.base_model_prefix)
    device = next(model.parameters()).device
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    ids, mask = ids.to(device), mask.to(device)
    hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
    last = hidden[torch.arange(len(seqs), device=device), mask.sum(1) - 1]
    return clf.score(last).squeeze(-1).float()


def bradley_terry(pad_id: int) -> Objective:
    def loss(model, items: list[RewardPair]):
        r = rewards(model, [p.chosen for p in items] + [p.rejected for p in items], pad_id)
        rw, rl = r[:len(items)], r[len(items):]
        margin = (rw - rl)
        return -F.logsigmoid(margin).sum(), {"accuracy": (margin.detach() > 0).float().sum(),
                                              "margin": margin.detach().sum()}

    return Objective(loss=loss, weight=lambda items: float(len(items)),
                     tokens=lambda items: sum(len(p.chosen) + len(p.rejected) for p in items),
                     length=lambda p: max(len(p.chosen), len(p.rejected)),
                     metric_keys=("accuracy", "margin"))


@torch.inference_mode()
def score_texts(model, fmt: ChatFormat, prompts: list[str], answers: list[str],
                batch_size: int = 16) -> list[float]:
    """r(x, y) for each (prompt, answer) text pair, in the reward model's chat format; sorted by
    length into batches, returned in the caller's order."""
    model.eval()
    seqs = [fmt.prompt_ids(p) + fmt.answer_ids(a) for p, a in zip(prompts, answers)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    scores = [0.0] * len(seqs)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        for i, r in zip(idx, rewards(model, [seqs[i] for i in idx], fmt.tok.pad_token_id).tolist()):
            scores[i] = r
    return scores


@torch.inference_mode()
def pairwise_accuracy(model, pairs: list[RewardPair], pad_id: int, batch_size: int) -> dict:
    """Share of pairs whose chosen answer gets the higher reward, with its standard error."""
    model.eval()
    wins = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        r = rewards(model, [p.chosen for p in chunk] + [p.rejected for p in chunk], pad_id)
        wins += (r[:len(chunk)] > r[len(chunk):]).tolist()
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
        pairs.append(RewardPair(c, j))
    return pairs, dropped


def run_reward(cfg: RunConfig) -> dict:
    """Train a reward model on ``cfg.reward``'s pairs into ``cfg.output_dir``/reward."""
    if not cfg.reward.data:
        raise DataError("spinlora reward needs preference pairs: reward.data=FILE_OR_HUB_ID")
    rows = load_pairs(cfg.reward, cfg.data)  # read and checked before any model is loaded
    out = rundir.prepare(cfg)
    summary = {"status": "running", "stage": "reward", "environment": environment()}
    rundir.write_json(out / "run.json", summary)
    t0 = time.perf_counter()
    model, tok = load_reward_model(cfg)
    device = next(model.parameters()).device
    acct = Accountant(device, MemoryMeter(device).baseline)
    fmt = ChatFormat(tok, cfg.data.system_prompt)
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


def load_trained(path: str | Path, cfg: RunConfig):
    """A saved reward model (``reward/adapter``) for scoring: (model, tokenizer), eval mode."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    base = resolve_model_path(cfg.model.name)
    tok = load_tokenizer(str(path))
    device = pick_device(cfg.model.device)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=1, dtype=pick_dtype(cfg.model.dtype, device))
    model.config.pad_token_id = tok.pad_token_id
    model = PeftModel.from_pretrained(model, str(path)).to(device).eval()
    return model, tok


def load_reranker(path: str | Path, cfg: RunConfig) -> tuple:
    """(reward model, its ChatFormat): what best-of-n, keep_best and early stopping score with."""
    model, tok = load_trained(path, cfg)
    return model, ChatFormat(tok, cfg.data.system_prompt)
