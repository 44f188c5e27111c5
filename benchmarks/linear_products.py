"""Benchmark: a CPU's fp32 linear products as a decoding step and a training step meet them; JSON.

    python benchmarks/linear_products.py                       # rows 4, 64 (decoding), 170, 680
    python benchmarks/linear_products.py --rows 4,16 --copies 90 --out benchmarks/results/x.json

``generate.packed_linears`` runs frozen linear layers from oneDNN-packed weights while
generating; training keeps ``F.linear`` (MKL). This says why, per row count:

- ``decode``: ``--copies`` distinct weights of one shape (default 90 of SmolLM2's 576 -> 1536,
  318 MB: more than any cache), each multiplied once a pass, as a decoding step meets its 211
  weights, each coming from memory: ``F.linear`` against ``mkldnn._linear_pointwise`` from a
  weight packed once; ms a pass and GB/s of weights read;
- ``hot``: one weight multiplied ``--copies`` times (it stays in the cache): the comparison a
  single-layer microbenchmark makes;
- ``train``: the 210 linear layers of one SmolLM2 (30 x q, k, v, o, gate, up, down), forward
  (x @ Wᵀ) and the backward's input gradient (g @ W), ``F.linear`` / matmul against packed
  weights (a second, transposed packed copy for the backward); GFLOP/s.

Each figure is the mean of ``--repeats`` passes after one warm-up pass; both sides of a row run
back to back. Run it alone on the machine: a second heavy process halves what it measures.
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
from spinlora.generate import pack_weight, packed_product  # noqa: E402

SMOLLM2_LAYER = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536),
                 (1536, 576)]  # (in, out) of q, k, v, o, gate, up, down


def _ms(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e3


def decode_rows(rows: int, weights: list[torch.Tensor], packs: list[torch.Tensor],
                repeats: int) -> dict:
    x = torch.randn(rows, weights[0].shape[1])
    gb = sum(w.numel() * w.element_size() for w in weights) / 1e9
    mkl = _ms(lambda: [F.linear(x, w) for w in weights], repeats)
    onednn = _ms(lambda: [packed_product(x, p) for p in packs], repeats)
    one, one_packed = weights[0], packs[0]
    hot_mkl = _ms(lambda: [F.linear(x, one) for _ in weights], repeats)
    hot_onednn = _ms(lambda: [packed_product(x, one_packed) for _ in weights], repeats)
    return {"rows": rows, "decode_ms": {"mkl": round(mkl, 1), "onednn_packed": round(onednn, 1)},
            "decode_weights_gb_per_s": {"mkl": round(gb / mkl * 1e3, 1),
                                        "onednn_packed": round(gb / onednn * 1e3, 1)},
            "hot_ms": {"mkl": round(hot_mkl, 1), "onednn_packed": round(hot_onednn, 1)}}


def train_layers() -> tuple[list, list, list]:
    """One SmolLM2's 210 weights, packed for the forward and, transposed, for the backward."""
    weights = [torch.randn(o, i) for i, o in SMOLLM2_LAYER * 30]
    return (weights, [pack_weight(w) for w in weights],
            [pack_weight(w.t().contiguous()) for w in weights])


def train_rows(rows: int, layers: tuple[list, list, list], repeats: int) -> dict:
    weights, packs, packs_t = layers
    xs = {i: torch.randn(rows, i) for i in (576, 1536)}
    gs = {o: torch.randn(rows, o) for o in (192, 576, 1536)}
    gflop = sum(2 * rows * w.numel() for w in weights) / 1e9
    sides = {
        "forward_mkl": lambda: [F.linear(xs[w.shape[1]], w) for w in weights],
        "forward_onednn_packed": lambda: [packed_product(xs[w.shape[1]], p)
                                          for w, p in zip(weights, packs)],
        "backward_mkl": lambda: [gs[w.shape[0]] @ w for w in weights],
        "backward_onednn_packed": lambda: [packed_product(gs[w.shape[0]], p)
                                           for w, p in zip(weights, packs_t)],
    }
    return {"rows": rows, "train_gflop_per_s": {k: round(gflop / _ms(f, repeats) * 1e3, 1)
                                                for k, f in sides.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="4,64", help="decoding rows, comma-separated")
    p.add_argument("--train-rows", default="170,680", help="training rows (tokens a micro-batch)")
    p.add_argument("--shape", default="576,1536", help="in,out of the decoding weights")
    p.add_argument("--copies", type=int, default=90)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out")
    a = p.parse_args()
    torch.manual_seed(0)
    fan_in, fan_out = (int(v) for v in a.shape.split(","))
    weights = [torch.randn(fan_out, fan_in) for _ in range(a.copies)]
    packs = [pack_weight(w) for w in weights]
    train = [int(r) for r in a.train_rows.split(",") if r]
    layers = train_layers() if train else None
    result = {"threads": torch.get_num_threads(), "shape": [fan_in, fan_out],
              "copies": a.copies, "repeats": a.repeats,
              "decode": [decode_rows(int(r), weights, packs, a.repeats)
                         for r in a.rows.split(",") if r],
              "train": [train_rows(int(r), layers, a.repeats) for r in train],
              "environment": environment()}
    emit(result, a.out)


if __name__ == "__main__":
    main()
