"""Benchmark: the reward model with each sequence run whole (``full``) against each prompt run
once under all of its answers (``shared``), in reranking and in training; prints JSON.

    python benchmarks/reward_speed.py --reward-model RM/reward/adapter --config configs/svamp.yaml \
        --samples RUN/eval/samples_MODEL+best_of_8_svamp.jsonl --limit 150 \
        --pairs PAIRS.jsonl --pair-limit 256

Both sides do the same work in the same process, one after the other, each after an untimed
warm-up call.
- ``--samples``: score every sample of the first ``--limit`` problems of a best-of-n or
  self-consistency samples file with the trained reward model. ``full`` is ``score_texts``
  (best-of-n's scorer until session 21), ``shared`` is ``score_groups``. Reported: seconds,
  answers/s and tokens encoded per side, the largest difference between the two sides' rewards,
  the problems whose best sample is the same, and the largest difference from the rewards the
  file kept, where it kept them.
- ``--pairs``: forward and backward of the Bradley–Terry loss over the first ``--pair-limit``
  pairs of a ``spinlora reward`` data file, ``--micro`` pairs a pass, the model as ``spinlora
  reward`` starts it (LoRA on the body, a fresh head). ``full`` runs chosen and rejected whole;
  ``shared`` runs the prompt once under both (``reward_model.pair_rewards``). Reported: seconds,
  pairs/s, and both sides' summed loss.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from _common import emit  # noqa: E402
from spinlora.accounting import environment  # noqa: E402
from spinlora.config import load_config  # noqa: E402
from spinlora.data import ChatFormat  # noqa: E402
from spinlora.reward_model import (load_reranker, load_reward_model, pair_rewards,  # noqa: E402
                                   score_groups, score_texts)


def _records(path: str, limit: int) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if r.get("samples")]
    if not rows:
        raise SystemExit(f"{path}: no record with 'samples' (a best-of-n or self-consistency "
                         "samples file is needed)")
    return rows[:limit]


def rerank(args, cfg, result: dict) -> None:
    model, fmt = load_reranker(args.reward_model, cfg)
    records = _records(args.samples, args.limit)
    prompts = [r["question"] for r in records]
    answers = [[s["text"] for s in r["samples"]] for r in records]
    n_answers = sum(len(a) for a in answers)
    p_len = [len(fmt.prompt_ids(p)) for p in prompts]
    a_len = [[len(fmt.answer_ids(a)) for a in per] for per in answers]
    tokens = {"full": sum(p * len(per) + sum(per) for p, per in zip(p_len, a_len)),
              "shared": sum(p + sum(per) for p, per in zip(p_len, a_len))}
    out = result["rerank"] = {"samples": args.samples, "problems": len(records),
                              "answers": n_answers, "dtype": str(next(model.parameters()).dtype),
                              "sides": {}}
    # warm-up, not timed: each side's first problem, so that neither pays the first calls' cost
    score_texts(model, fmt, [prompts[0]] * len(answers[0]), answers[0], batch_size=args.full_batch)
    score_groups(model, fmt, prompts[:1], answers[:1], batch_size=args.shared_batch)
    scores = {}
    for side in ("full", "shared"):
        t0 = time.perf_counter()
        if side == "full":
            flat = score_texts(model, fmt, [p for p, per in zip(prompts, answers) for _ in per],
                               [a for per in answers for a in per], batch_size=args.full_batch)
        else:
            flat = [x for per in score_groups(model, fmt, prompts, answers,
                                              batch_size=args.shared_batch) for x in per]
        dt = time.perf_counter() - t0
        scores[side] = flat
        out["sides"][side] = {"seconds": round(dt, 2), "answers_per_s": round(n_answers / dt, 1),
                              "tokens_encoded": tokens[side]}
        print(f"rerank {side}: {dt:.1f} s, {n_answers / dt:.1f} answers/s, {tokens[side]} "
              "tokens encoded", file=sys.stderr)
    stored = [s.get("reward") for r in records for s in r["samples"]]
    if all(x is not None for x in stored):
        for side, flat in scores.items():
            out["sides"][side]["max_abs_diff_vs_file"] = max(
                abs(a - b) for a, b in zip(flat, stored))
    a, b = scores["full"], scores["shared"]
    out["max_abs_diff"] = max(abs(x - y) for x, y in zip(a, b))
    same, start = 0, 0
    for per in answers:
        k = len(per)
        same += (max(range(k), key=lambda j: a[start + j])
                 == max(range(k), key=lambda j: b[start + j]))
        start += k
    out["same_pick"] = same
    out["full_over_shared"] = round(out["sides"]["full"]["seconds"]
                                    / out["sides"]["shared"]["seconds"], 2)


def train_pass(args, cfg, result: dict) -> None:
    from spinlora.stages.reward import _tokenize

    rows = [json.loads(line) for line in open(args.pairs) if line.strip()][:args.pair_limit]
    model, tok = load_reward_model(cfg)
    model.train()
    pairs, dropped = _tokenize(rows, ChatFormat.from_config(tok, cfg.data), cfg.data.max_length)
    out = result["train"] = {"pairs_file": args.pairs, "pairs": len(pairs), "dropped": dropped,
                             "micro_batch": args.micro,
                             "dtype": str(next(model.parameters()).dtype), "sides": {}}
    for lens in ([0], [pairs[0].prompt_len]):  # warm-up, not timed: one pair each way
        rw, rl = pair_rewards(model, [pairs[0].chosen], [pairs[0].rejected], lens, tok.pad_token_id)
        (rw - rl).sum().backward()
        model.zero_grad(set_to_none=True)
    for side in ("full", "shared"):
        total, t0 = 0.0, time.perf_counter()
        for s in range(0, len(pairs), args.micro):
            chunk = pairs[s:s + args.micro]
            lens = [p.prompt_len for p in chunk] if side == "shared" else [0] * len(chunk)
            rw, rl = pair_rewards(model, [p.chosen for p in chunk], [p.rejected for p in chunk],
                                  lens, tok.pad_token_id)
            loss = -torch.nn.functional.logsigmoid(rw - rl).sum()
            loss.backward()
            model.zero_grad(set_to_none=True)
            total += loss.item()
        dt = time.perf_counter() - t0
        out["sides"][side] = {"seconds": round(dt, 2), "pairs_per_s": round(len(pairs) / dt, 2),
                              "loss_sum": total}
        print(f"train {side}: {dt:.1f} s, {len(pairs) / dt:.2f} pairs/s", file=sys.stderr)
    out["full_over_shared"] = round(out["sides"]["full"]["seconds"]
                                    / out["sides"]["shared"]["seconds"], 2)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reward-model", help="a reward/adapter folder (for --samples)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "svamp.yaml"))
    ap.add_argument("--samples", help="a best-of-n or self-consistency samples file")
    ap.add_argument("--limit", type=int, default=150, help="problems (all of their samples)")
    ap.add_argument("--full-batch", type=int, default=16, help="sequences per batch, full side")
    ap.add_argument("--shared-batch", type=int, default=64, help="answers per batch, shared side")
    ap.add_argument("--pairs", help="preference pairs (prompt, chosen, rejected) jsonl")
    ap.add_argument("--pair-limit", type=int, default=256)
    ap.add_argument("--micro", type=int, default=16, help="pairs per forward/backward pass")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not (args.samples or args.pairs):
        ap.error("nothing to measure: give --samples (with --reward-model) and/or --pairs")
    if args.samples and not args.reward_model:
        ap.error("--samples needs --reward-model (a trained reward/adapter folder)")
    cfg = load_config(args.config, [])
    result = {"environment": environment(), "reward_model": args.reward_model,
              "threads": torch.get_num_threads()}
    if args.samples:
        rerank(args, cfg, result)
    if args.pairs:
        train_pass(args, cfg, result)
    emit(result, args.out)
    return result


if __name__ == "__main__":
    main()
