"""Benchmark: how fast this CPU runs the linear layers of a decoding step and of a training step, alone; prints JSON.

    python benchmarks/roofline.py                       # SmolLM2-135M and Qwen2.5-0.5B, 32 / 1360 rows
    python benchmarks/roofline.py --out benchmarks/results/roofline_cpu.json

A decoding step of a dense model can be no faster than its linear layers: at batch 32 they are
nearly all of its arithmetic, while attention over a few hundred cached tokens, the norms and the
sampling add to it. So the time of the linear layers alone, run back to back on random weights of
the model's shapes, bounds the tokens/s any engine can reach on this machine in that precision
(``decode``). A training step of a LoRA model runs each frozen linear layer forward and back to
its input (the weight takes no gradient): the ratio of those times in bf16 and fp32 bounds what
bf16 can gain on the step's largest part (``train``); the LM head is left out there, since the
scoring head runs in fp32 on both sides.

Each side runs the kernel spinlora runs: decoding from oneDNN-packed weights in bf16 and fp32
alike (what ``generate.packed_linears`` does since session 27; ``F.linear`` where this CPU
cannot pack the dtype: bf16 without bf16 units), training through ``F.linear``.
Each shape is timed ``--repeats`` times after a warm-up and the fastest kept: a bound, not an
average. Shapes are the published configs (no weights are read, nothing is downloaded).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _common import emit  # noqa: E402
from spinlora.accounting import environment  # noqa: E402
from spinlora.generate import can_pack, pack_weight, packed_product  # noqa: E402
from spinlora.models import cpu_info  # noqa: E402

# (hidden, intermediate, layers, query heads, key/value heads, head dim, vocabulary): the
# config.json of HuggingFaceTB/SmolLM2-135M-Instruct and of Qwen/Qwen2.5-0.5B-Instruct
MODELS = {
    "SmolLM2-135M": (576, 1536, 30, 9, 3, 64, 49152),
    "Qwen2.5-0.5B": (896, 4864, 24, 14, 2, 64, 151936),
}


def layer_shapes(hidden, inter, layers, heads, kv, head_dim, vocab, head: bool = True):
    """(in, out, how many) of every linear layer: q, k, v, o, gate, up, down; then the LM head."""
    per = [(hidden, heads * head_dim), (hidden, kv * head_dim), (hidden, kv * head_dim),
           (heads * head_dim, hidden), (hidden, inter), (hidden, inter), (inter, hidden)]
    shapes = [(i, o, layers) for i, o in per]
    return shapes + [(hidden, vocab, 1)] if head else shapes


def _fastest(fn, repeats: int, inner: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def decode_seconds(shapes, rows: int, dtype: torch.dtype, repeats: int) -> tuple[float, float]:
    """Seconds and FLOPs of one decoding step's linear layers at ``rows`` rows."""
    total = flops = 0.0
    for i, o, n in shapes:
        w = (torch.randn(o, i) * 0.02).to(dtype)
        x = torch.randn(rows, i).to(dtype)
        if can_pack(dtype):  # what generate runs (generate.packed_linears)
            packed = pack_weight(w)
            fn = lambda: packed_product(x, packed)  # noqa: E731
        else:
            fn = lambda: F.linear(x, w)  # noqa: E731
        total += _fastest(fn, repeats, 20 if o * i < 5e7 else 4) * n
        flops += 2.0 * rows * i * o * n
    return total, flops


def train_seconds(shapes, rows: int, dtype: torch.dtype, repeats: int) -> tuple[float, float]:
    """Seconds and FLOPs of the frozen linear layers of a training step: forward, and backward to
    the input only."""
    total = flops = 0.0
    for i, o, n in shapes:
        w = (torch.randn(o, i) * 0.02).to(dtype)
        x = torch.randn(rows, i).to(dtype).requires_grad_()
        g = torch.randn(rows, o).to(dtype)

        def fn():
            F.linear(x, w).backward(g)
            x.grad = None

        total += _fastest(fn, repeats, 2) * n
        flops += 4.0 * rows * i * o * n
    return total, flops


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--decode-rows", type=int, default=32)
    p.add_argument("--train-rows", type=int, default=1360,
                   help="tokens of a training micro-batch (8 rows of ~170: benchmarks/train_speed.py)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out")
    args = p.parse_args()
    result = {"benchmark": "roofline", "args": vars(args), "environment": environment(),
              "cpu": cpu_info(), "models": {}}
    for name in args.models.split(","):
        cfg = MODELS[name]
        out = {}
        for label, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            s, f = decode_seconds(layer_shapes(*cfg), args.decode_rows, dtype, args.repeats)
            out[f"decode_{label}"] = {"ms_per_step": round(s * 1000, 1),
                                      "gflop_per_s": round(f / s / 1e9),
                                      "tokens_per_s_bound": round(args.decode_rows / s, 1)}
            print(name, f"decode {label}", out[f"decode_{label}"], flush=True)
        for label, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            s, f = train_seconds(layer_shapes(*cfg, head=False), args.train_rows, dtype,
                                 args.repeats)
            out[f"train_{label}"] = {"ms_per_micro_batch": round(s * 1000),
                                     "gflop_per_s": round(f / s / 1e9)}
            print(name, f"train {label}", out[f"train_{label}"], flush=True)
        out["train_bf16_vs_fp32"] = round(out["train_fp32"]["ms_per_micro_batch"]
                                          / out["train_bf16"]["ms_per_micro_batch"], 2)
        out["decode_bf16_vs_fp32"] = round(out["decode_fp32"]["ms_per_step"]
                                           / out["decode_bf16"]["ms_per_step"], 2)
        result["models"][name] = out
    emit(result, args.out)


if __name__ == "__main__":
    main()
