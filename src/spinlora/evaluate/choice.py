"""Accuracy on a multiple-choice task by log-likelihood: acc (sum log-prob) and acc_norm
(log-prob per character of the continuation, lm-evaluation-harness's normalisation), with the
standard error of the mean; MMLU also gets per-subject accuracies and their macro average."""
from __future__ import annotations

import math
import time

from tqdm.auto import tqdm

from .loglik import score_questions
from .tasks import Item


def stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0


def evaluate_choice_task(model, tok, task: str, items: list[Item], label: str = "") -> dict:
    was_training = model.training
    model.eval()
    correct, correct_norm, subjects = [], [], {}
    t0 = time.perf_counter()
    bar = tqdm(total=len(items), desc=f"{task} {label}", unit="q", leave=False)
    all_scores = score_questions(model, tok, [(it.contexts, it.continuations) for it in items],
                                 progress=bar.update)
    bar.close()
    for item, scores in zip(items, all_scores):
        pred = max(range(len(scores)), key=lambda i: scores[i].logprob)
        pred_norm = max(range(len(scores)), key=lambda i: scores[i].logprob / max(scores[i].n_chars, 1))
        correct.append(pred == item.gold)
        correct_norm.append(pred_norm == item.gold)
        if "subject" in item.meta:
            subjects.setdefault(item.meta["subject"], []).append(pred == item.gold)
    seconds = time.perf_counter() - t0
    if was_training:
        model.train()
    n = len(items)
    acc = sum(correct) / max(n, 1)
    acc_norm = sum(correct_norm) / max(n, 1)
    out = {"task": task, "n": n, "acc": acc, "acc_stderr": stderr(acc, n), "acc_norm": acc_norm,
           "acc_norm_stderr": stderr(acc_norm, n), "seconds": round(seconds, 2),
           "examples_per_s": round(n / seconds, 2) if seconds else None}
    if subjects:
        per = {s: sum(v) / len(v) for s, v in sorted(subjects.items())}
        out.update(per_subject=per, acc_macro=sum(per.values()) / len(per), acc_micro=acc)
    return out
