"""Hessian spectrum of the training loss restricted to the trainable (adapter) parameters.

    spinlora hessian configs/demo.yaml --adapter runs/demo/sft/adapter --k 8

Only Hessian-vector products are formed (double backward, Pearlmutter 1994), never the matrix:
the largest eigenvalue by power iteration, the top-k spectrum by Lanczos with full
re-orthogonalisation (as PyHessian does: Yao et al. 2020, arXiv 1912.07145). From the top-k
eigenvalues: the entropy effective rank exp(H(p)), p_i = λ_i / Σλ (Roy & Vetterli 2007), and a
recommended LoRA rank by the rule printed with it (``RANK_RULE``).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

RANK_RULE = ("smallest power of two >= the number of top eigenvalues holding 90 % of the "
             "positive mass of the computed top-k spectrum (capped at 64)")


def hvp_fn(loss_fn: Callable[[], torch.Tensor], params: list[torch.Tensor]):
    """v -> H v for the Hessian of ``loss_fn()`` in ``params`` (flat vectors)."""

    def matvec(v: torch.Tensor) -> torch.Tensor:
        loss = loss_fn()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        hv = torch.autograd.grad((flat * v).sum(), params, allow_unused=True)
        return torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1)
                          for h, p in zip(hv, params)]).detach()

    return matvec


def power_iteration(matvec, dim: int, iters: int = 50, tol: float = 1e-4, seed: int = 0,
                    device=None, dtype=torch.float32) -> tuple[float, int]:
    """Largest-magnitude eigenvalue. Returns (eigenvalue, iterations used)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=g, dtype=dtype).to(device)
    v /= v.norm()
    lam = 0.0
    for i in range(1, iters + 1):
        hv = matvec(v)
        new = float(v @ hv)
        v = hv / (hv.norm() + 1e-30)
        if i > 1 and abs(new - lam) <= tol * (abs(lam) + 1e-12):
            return new, i
        lam = new
    return lam, iters


def lanczos(matvec, dim: int, k: int, iters: int | None = None, seed: int = 0, device=None,
            dtype=torch.float32) -> list[float]:
    """Top-k (largest algebraic) Ritz values after ``iters`` Lanczos steps (default 3k)."""
    m = min(dim, iters or max(3 * k, 10))
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(dim, generator=g, dtype=torch.float64)
    q /= q.norm()
    qs, alphas, betas = [q], [], []
    for j in range(m):
        w = matvec(qs[j].to(device=device, dtype=dtype)).to("cpu", torch.float64)
        a = float(qs[j] @ w)
        alphas.append(a)
        basis = torch.stack(qs)
        w = w - basis.T @ (basis @ w)  # full re-orthogonalisation (twice is enough)
        w = w - basis.T @ (basis @ w)
        b = float(w.norm())
        if j == m - 1 or b < 1e-10:
            break
        betas.append(b)
        qs.append(w / b)
    t = torch.diag(torch.tensor(alphas))
    for i, b in enumerate(betas[:len(alphas) - 1]):
        t[i, i + 1] = t[i + 1, i] = b
    ritz = torch.linalg.eigvalsh(t).flip(0)
    return [float(x) for x in ritz[:k]]


def effective_rank(eigs: list[float]) -> float:
    """exp(entropy) of the normalised positive eigenvalues (Roy & Vetterli 2007)."""
    pos = [e for e in eigs if e > 0]
    total = sum(pos)
    if not total:
        return 0.0
    return math.exp(-sum(e / total * math.log(e / total) for e in pos))


def _needed(eigs: list[float], mass: float = 0.9) -> int:
    """How many of the largest positive eigenvalues hold ``mass`` of their sum."""
    pos = sorted((e for e in eigs if e > 0), reverse=True)
    total, run = sum(pos), 0.0
    for n, e in enumerate(pos, 1):
        run += e
        if run >= mass * total:
            return n
    return len(pos)


def recommend_rank(eigs: list[float], mass: float = 0.9, cap: int = 64) -> int:
    """See ``RANK_RULE``. When every computed eigenvalue is needed (``saturated`` in the
    output), the spectrum is flatter than k shows: compute more (``--k``)."""
    n = _needed(eigs, mass)
    return 1 if n == 0 else min(cap, 1 << (n - 1).bit_length())


def analyse(loss_fn, params: list[torch.Tensor], k: int = 8, iters: int | None = None,
            power_iters: int = 30, seed: int = 0) -> dict:
    """Power iteration, Lanczos top-k, effective rank and recommended rank, with timings."""
    import time

    dim = sum(p.numel() for p in params)
    device, dtype = params[0].device, params[0].dtype
    matvec = hvp_fn(loss_fn, params)
    t0 = time.perf_counter()
    lam, used = power_iteration(matvec, dim, power_iters, seed=seed, device=device, dtype=dtype)
    t1 = time.perf_counter()
    eigs = lanczos(matvec, dim, k, iters, seed=seed, device=device, dtype=dtype)
    t2 = time.perf_counter()
    return {"parameters": dim, "lambda_max_power": lam, "power_iterations": used,
            "top_k": eigs, "k": k, "lanczos_steps": min(dim, iters or max(3 * k, 10)),
            "effective_rank": effective_rank(eigs), "recommended_rank": recommend_rank(eigs),
            "rule": RANK_RULE, "saturated": _needed(eigs) >= len([e for e in eigs if e > 0]), "seconds": {"power": round(t1 - t0, 2), "lanczos": round(t2 - t1, 2)}}


def run_hessian(cfg, adapter: str | None, k: int = 8, iters: int | None = None,
                examples: int = 8, power_iters: int = 30) -> dict:
    """The SFT loss (mean NLL per answer token) on ``examples`` SFT rows, at the saved adapter
    (or a fresh one), eager attention (double backward through fused attention kernels is not
    available on every backend)."""
    from . import adapters
    from .data import ChatFormat, build_examples, collate, load_rows, subset
    from .scoring import answer_logps
    from .models import load_model

    model, tok = load_model(cfg.model)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    if adapter:
        cfg.adapter = adapters.saved_config(adapter, cfg.adapter)
        model = adapters.load(model, adapter, trainable=True)
    else:
        model = adapters.attach(model, cfg.adapter)
    model.eval()  # no dropout: H must be one fixed matrix
    fmt = ChatFormat.from_config(tok, cfg.data)
    rows = subset(load_rows(cfg.data.train, cfg.data, "train"), examples, cfg.data.seed)
    exs, _ = build_examples(rows, fmt, cfg.data)
    device = next(model.parameters()).device
    batch = collate([(e.prompt_ids, e.answer_ids) for e in exs], tok.pad_token_id).to(device)

    def loss_fn():
        lp, n = answer_logps(model, batch)
        return -lp.sum() / n.sum()

    params = [p for p in model.parameters() if p.requires_grad]
    out = analyse(loss_fn, params, k=k, iters=iters, power_iters=power_iters, seed=cfg.seed)
    out.update(adapter=adapter, method=cfg.adapter.method, examples=len(exs),
               loss=float(loss_fn().detach()))
    return out
