"""Benchmark: LoRA-SFT training steps in fp32 and bf16 on the same rows; prints JSON.

    python benchmarks/train_speed.py                       # SmolLM2, SVAMP rows, 20 steps of 8
    python benchmarks/train_speed.py --model ../shared/models/qwen2.5-0.5b-instruct --steps 20
    python benchmarks/train_speed.py --profile --sides float32,bfloat16   # where a step's time goes
    python benchmarks/train_speed.py --profile --ops 30                   # ... and the top ops by shape

Every side starts from the same seed (same LoRA init, same batches in the same order) and runs
``--steps`` optimizer steps; the result gives tokens/s per side (the first step, which warms the
kernels up, is left out), the loss of every step, and the bf16 / fp32 ratios. A side is
``dtype`` or ``dtype:attention`` (``bfloat16:eager``: eager attention, whose per-row results do
not depend on what else is in the batch; see docs/adapters.md); ``dtype/whole`` runs every row
whole (``train.share_prefix=false``) instead of the micro-batch's shared system prompt once,
``dtype/peft`` runs LoRA through peft's own forward (``adapter.fused=false``) instead of
``adapters.lora.fused_forward``, and a flag ``key=value`` is a config override
(``bfloat16/adapter.dropout=0.1``); flags combine (``bfloat16/whole/peft``):

    python benchmarks/train_speed.py --sides float32,float32/whole --batch 16   # shared prefix
    python benchmarks/train_speed.py --sides bfloat16/peft,bfloat16 --batch 16  # fused LoRA
    python benchmarks/train_speed.py --sides bfloat16,bfloat16/adapter.dropout=0.1 --batch 16
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _common import emit  # noqa: E402
from spinlora.accounting import Accountant, environment  # noqa: E402
from spinlora.adapters import attach  # noqa: E402
from spinlora.config import load_config  # noqa: E402
from spinlora.data import ChatFormat, build_examples, load_rows, subset  # noqa: E402
from spinlora.models import load_model  # noqa: E402
from spinlora.stages.sft import sft_objective  # noqa: E402
from spinlora.train import MetricsLog, train_loop  # noqa: E402


def _setup(spec: str, args, n_rows: int, over: list[str]):
    """A side's config (svamp.yaml with its dtype, attention and ``over``), the seeded model with
    a fresh LoRA, and the SFT examples of the first ``n_rows`` training rows."""
    spec, *flags = spec.split("/")
    dtype, _, attn = spec.partition(":")
    over = [f"model.dtype={dtype}", f"train.share_prefix={'whole' not in flags}",
            f"adapter.fused={'peft' not in flags}"] + [f for f in flags if "=" in f] + over
    if args.model:
        over.append(f"model.name={args.model}")
    if attn:
        over.append(f"model.attn_implementation={attn}")
    cfg = load_config(str(ROOT / "configs" / "svamp.yaml"), over)
    torch.manual_seed(0)
    model, tok = load_model(cfg.model)
    model = attach(model, cfg.adapter)
    fmt = ChatFormat.from_config(tok, cfg.data)
    rows = load_rows(args.data, cfg.data, "train")
    examples, _ = build_examples(subset(rows, n_rows, 0), fmt, cfg.data)
    return cfg, model, tok, examples


def side(spec: str, args) -> dict:
    dtype, _, attn = spec.partition("/")[0].partition(":")
    cfg, model, tok, examples = _setup(spec, args, args.batch * args.steps, [
        f"train.batch_size={args.batch}", f"train.micro_batch_size={args.batch}",
        "train.warmup_ratio=0", "train.schedule=constant"])
    acct = Accountant(next(model.parameters()).device)
    records = train_loop(model, examples, sft_objective(tok.pad_token_id, cfg.train.share_prefix),
                         cfg.train, cfg.train.lr,
                         1.0, acct, MetricsLog(None), 0, spec)
    times = [r["seconds"] for r in records]
    tokens = sum(len(e.prompt_ids) + len(e.answer_ids) for e in examples)
    per_step = tokens / len(records)
    timed = times[1:] or times
    return {"side": spec, "dtype": dtype, "attention": attn or "default", "steps": len(records),
            "tokens": tokens, "tokens_per_s": round(per_step * len(timed) / sum(timed), 1),
            "seconds": round(sum(times), 2), "losses": [round(r["loss"], 5) for r in records],
            "loss_last": records[-1]["loss"]}


MATMULS = {"aten::mm", "aten::bmm", "aten::addmm", "aten::linear", "aten::matmul"}


def profile_side(spec: str, args) -> dict:
    """``--profile``: four SFT steps (forward + backward) of ``--batch`` rows under the torch
    profiler, after one warm-up step: seconds in matrix products (mm, bmm, addmm: self time)
    against everything else. Shows how far a dtype's speed-up can go: the rest gains less from
    bf16 than the products do."""
    from torch.profiler import ProfilerActivity, profile

    cfg, model, tok, examples = _setup(spec, args, args.batch * 5, [])
    model.train()
    examples.sort(key=lambda e: len(e.prompt_ids) + len(e.answer_ids))  # little padding
    objective = sft_objective(tok.pad_token_id, cfg.train.share_prefix)
    batches = [examples[i:i + args.batch] for i in range(0, len(examples), args.batch)]

    def step(batch):
        loss, _ = objective.loss(model, batch)
        loss.backward()

    step(batches[0])
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=bool(args.ops)) as prof:
        for b in batches[1:]:
            step(b)
    wall = time.perf_counter() - t0
    ops = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in ops) / 1e6
    mm = sum(e.self_cpu_time_total for e in ops if e.key in MATMULS) / 1e6
    out = {"side": spec, "steps": len(batches) - 1, "wall_seconds": round(wall, 3),
           "profiled_seconds": round(total, 3), "matmul_seconds": round(mm, 3),
           "other_seconds": round(total - mm, 3)}
    if args.ops:  # the ops that take the most self time, by input shapes
        by_shape = sorted(prof.key_averages(group_by_input_shape=True),
                          key=lambda e: -e.self_cpu_time_total)[:args.ops]
        out["top_ops"] = [{"op": e.key, "shapes": str(e.input_shapes), "calls": e.count,
                           "self_seconds": round(e.self_cpu_time_total / 1e6, 4)}
                          for e in by_shape]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/svamp/mawps-asdiv-a_train.csv"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--sides", default="float32,bfloat16,bfloat16:eager")
    p.add_argument("--out", default=None)
    p.add_argument("--profile", action="store_true",
                   help="instead: 4 profiled steps per side, matmul seconds against the rest")
    p.add_argument("--ops", type=int, default=0,
                   help="with --profile: also list the N ops (by input shapes) of most self time")
    args = p.parse_args()
    if args.profile:
        sides = [profile_side(s, args) for s in args.sides.split(",")]
        base = next((r for r in sides if r["side"] == "float32"), None)
        if base:
            for r in sides:
                for key in ("wall_seconds", "matmul_seconds", "other_seconds"):
                    r[key.replace("seconds", "speedup_vs_fp32")] = round(base[key] / r[key], 2)
        emit({"benchmark": "train_speed --profile", "batch": args.batch, "data": args.data,
              "model": args.model or "SmolLM2-135M-Instruct", "threads": torch.get_num_threads(),
              "sides": sides, "environment": environment()}, args.out)
        return
    results = [side(s, args) for s in args.sides.split(",")]
    base = next((r for r in results if r["side"] == "float32"), None)
    if base:
        for r in results:
            r["speed_vs_fp32"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2)
            r["loss_last_rel_diff_vs_fp32"] = round(abs(r["loss_last"] - base["loss_last"])
                                                    / abs(base["loss_last"]), 4)
    emit({"benchmark": "train_speed", "steps": args.steps, "batch": args.batch, "data": args.data,
          "model": args.model or "SmolLM2-135M-Instruct", "threads": torch.get_num_threads(),
          "sides": results, "environment": environment()}, args.out)


if __name__ == "__main__":
    main()
