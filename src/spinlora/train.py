"""The one training loop shared by SFT and every SPIN iteration.

An ``Objective`` says how to score a micro-batch (summed loss + summed metrics) and how much weight
a batch carries (answer tokens for SFT, pairs for SPIN). Each optimizer step divides by the weight
of the whole accumulated batch, so batch 8 x accumulation 1 and batch 2 x accumulation 4 give the
same update. Every step is written to the metrics JSONL; a line is printed every ``log_every``.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from . import dist
from .accounting import Accountant
from .config import TrainConfig
from .scoring import set_checkpointing


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def _pack_for_host(t: torch.Tensor, pin_memory: bool = True):
    """A tensor saved for the backward pass, copied to host memory, unless it is a parameter (it
    stays on the device anyway) or not contiguous. The last are left
    where they are because some kernels need their layout back: the memory-efficient SDPA kernel
    saves its attention bias as a slice of a row-padded buffer and its backward requires the
    padded row stride (``torch.autograd.graph.save_on_cpu``, which brings every tensor back
    contiguous, failed there on an H200 with "attn_bias is not correctly aligned (strideB)":
    benchmarks/results/gpu_s41). Such tensors are a small part of the activations."""
    if isinstance(t, torch.nn.Parameter) or not t.is_contiguous():
        return t
    host = torch.empty(t.size(), dtype=t.dtype, layout=t.layout, pin_memory=pin_memory)
    host.copy_(t)
    return t.device, host


def _unpack_from_host(packed):
    if isinstance(packed, torch.Tensor):
        return packed
    device, host = packed
    return host.to(device, non_blocking=host.is_pinned())


def offload_to_host(pin_memory: bool = True):
    """``train.offload_activations``: the forward pass's saved activations wait in host memory
    for the backward (see ``_pack_for_host`` for what stays)."""
    return torch.autograd.graph.saved_tensors_hooks(
        lambda t: _pack_for_host(t, pin_memory), _unpack_from_host)


def training_attention(model):
    """The SDPA kernels a training forward may pick. On CUDA with a bf16 or fp16 model, not the
    "memory-efficient" one: with an attention mask (every batch whose prompt prefix runs once on a
    KV cache, and every left-padded one) its bf16 backward returned a NaN gradient at step 17 of
    the 0.5B GSM8K SFT, on an H100 (session 3) and again on an H200 (session 41), where eager
    attention ran all 125 steps (benchmarks/results/gpu_s41). Flash still serves batches without
    a mask; masked ones take the math kernel (eager's arithmetic). fp32 and CPUs: unchanged."""
    frozen = next((p for p in model.parameters() if not p.requires_grad), None)
    p = frozen if frozen is not None else next(model.parameters())
    if p.device.type != "cuda" or p.dtype not in (torch.bfloat16, torch.float16):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])


@dataclass
class Objective:
    """loss(model, items) -> (summed loss tensor, {metric: summed value}); weight(items) -> float;
    tokens(items) -> int (tokens processed, for tokens/s)."""

    loss: Callable[[Any, list], tuple[torch.Tensor, dict]]
    weight: Callable[[list], float]
    tokens: Callable[[list], int]
    length: Callable[[Any], int] | None = None  # one item's padded length, for group_by_length
    metric_keys: tuple[str, ...] | None = None  # the metrics loss() returns (for several processes)


def epoch_batches(n: int, batch_size: int, rng: random.Random,
                  lengths: list[int] | None = None) -> list[list[int]]:
    """Shuffled batches of indices. With ``lengths``, batches hold items of similar length
    (sorted inside groups of 8 batches, then the batch order is shuffled: HF's group_by_length),
    so dynamic padding wastes little compute."""
    order = list(range(n))
    rng.shuffle(order)
    if lengths is not None:
        group = 8 * batch_size
        order = [i for g in range(0, n, group)
                 for i in sorted(order[g:g + group], key=lambda i: -lengths[i])]
    batches = [order[k:k + batch_size] for k in range(0, n, batch_size)]
    if lengths is not None:
        rng.shuffle(batches)
    return batches


def length_units(lengths: list[int], size: int) -> list[list[int]]:
    """Indices grouped once into micro-batches of ``size`` items of similar length (sorted by
    length, then cut): the fixed units of ``train_loop(units=...)`` and of the reference pass
    that goes with it."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[k:k + size] for k in range(0, len(order), size)]


class MetricsLog:
    """Append-only JSONL, flushed every line so an interrupted run keeps what it logged (by the
    main process only, when there are several). ``report_to`` adds TensorBoard (event files in
    ``tensorboard/`` beside the JSONL; ``pip install tensorboard``) and Weights & Biases (the
    current wandb run, or a new one in project "spinlora"; keys prefixed with the stage)."""

    def __init__(self, path: Path | None, report_to: list[str] | tuple = (), name: str = ""):
        main = bool(path) and dist.is_main()
        self.f = open(path, "a") if main else None
        self.tb = self.wb = None
        self.name = name
        if main and "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise RuntimeError("train.report_to=[tensorboard] needs the tensorboard package: "
                                   "pip install tensorboard") from None
            self.tb = SummaryWriter(log_dir=str(Path(path).parent / "tensorboard"))
        if main and "wandb" in report_to:
            try:
                import wandb
            except ImportError:
                raise RuntimeError("train.report_to=[wandb] needs wandb: pip install wandb, then "
                                   "wandb login (or WANDB_MODE=offline)") from None
            self.wb = wandb.run or wandb.init(project="spinlora")

    def log(self, record: dict) -> None:
        if self.f:
            self.f.write(json.dumps(record) + "\n")
            self.f.flush()
        scalars = {k: v for k, v in record.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        if self.tb:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, record.get("step", 0))
        if self.wb:
            self.wb.log({f"{self.name}/{k}" if self.name else k: v for k, v in scalars.items()})

    def close(self) -> None:
        if self.f:
            self.f.close()
        if self.tb:
            self.tb.close()


def make_optimizer(params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warmup = int(cfg.warmup_ratio * total_steps)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return f


def train_loop(model, items: list, objective: Objective, cfg: TrainConfig, lr: float, epochs: float,
               acct: Accountant, log: MetricsLog, seed: int, desc: str,
               extra: dict | None = None, method: str = "lora",
               on_step: Callable[[int], bool] | None = None,
               units: list[list[int]] | None = None,
               epoch_items: Callable[[int], list] | None = None) -> list[dict]:
    """Train the model's trainable parameters on ``items``. Returns one record per step.

    ``method`` names the adapter method, whose hooks run here: a regulariser added once per
    optimizer step (AdaLoRA's orthogonality term), a call after each step (AdaLoRA's rank
    allocation) and the stage's step count (AdaLoRA's schedule). ``on_step(step)`` runs after
    each optimizer step; returning True stops training there (early stopping).

    ``units``: fixed micro-batches (lists of item indices, e.g. from ``length_units``). Each
    epoch shuffles the units, not the items, and a step takes ``batch_size // micro_batch_size``
    of them, so an item is always computed beside the same companions with the same padding:
    exactly as the reference pass that scored those units before training (SPIN, DPO, RL). In
    bf16 a row's log-prob depends on its batch's padding by ~0.03 nats, which would otherwise
    show up as a false step-0 margin.

    ``epoch_items(e)``: epoch e's items (e = 1, 2, …; ``items`` is epoch 0's), as many as
    ``items`` (``data.augment_each_epoch``); not with ``units``.
    """
    from .adapters import get

    hooks = get(method)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("the model has no trainable parameters: was the adapter loaded with "
                           "is_trainable=True?")
    if units is not None and epoch_items is not None:
        raise ValueError("epoch_items replaces the items each epoch; fixed units cannot follow")
    lengths = ([objective.length(x) for x in items]
               if cfg.group_by_length and objective.length else None)
    if units is None:
        steps_per_epoch = math.ceil(len(items) / cfg.batch_size)
    else:
        per_step = max(1, cfg.batch_size // cfg.micro_batch_size)
        steps_per_epoch = math.ceil(len(units) / per_step)
        unit_lengths = [max(lengths[i] for i in u) for u in units] if lengths else None
    total = max(1, math.ceil(steps_per_epoch * epochs))
    opt = make_optimizer(params, cfg, lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total))
    rng = random.Random(seed)
    torch.manual_seed(seed)
    if hooks.set_total_steps:
        hooks.set_total_steps(model, total)
    if cfg.gradient_checkpointing and not hooks.gradient_checkpointing:
        raise ValueError(f"train.gradient_checkpointing is not possible with adapter.method="
                         f"{method} (its keys/values live in the KV cache, which checkpointing "
                         "turns off); set train.gradient_checkpointing=false")
    if cfg.gradient_checkpointing:
        set_checkpointing(model, True)
    device = next(model.parameters()).device
    if cfg.offload_activations and device.type != "cuda":
        print("[spinlora] train.offload_activations: the model is on the CPU already, so it "
              "saves no memory here")

    def offloaded():
        """Saved activations to (pinned) host memory during the forward pass."""
        if cfg.offload_activations:
            return offload_to_host(pin_memory=device.type == "cuda")
        return contextlib.nullcontext()

    model.train()
    records, batches = [], []
    bar = tqdm(total=total, desc=desc, unit="step", leave=False)
    with acct.phase("train") as ph:
        for step in range(total):
            if step % steps_per_epoch == 0:
                if epoch_items is not None and step:
                    n_items, items = len(items), epoch_items(step // steps_per_epoch)
                    if len(items) != n_items:
                        raise ValueError(f"epoch_items gave {len(items)} items for epoch "
                                         f"{step // steps_per_epoch + 1}, not {n_items}")
                    lengths = [objective.length(x) for x in items] if lengths else None
                if units is None:
                    batches = [[idx[m:m + cfg.micro_batch_size]
                                for m in range(0, len(idx), cfg.micro_batch_size)]
                               for idx in epoch_batches(len(items), cfg.batch_size, rng, lengths)]
                else:
                    batches = [[units[u] for u in ub]
                               for ub in epoch_batches(len(units), per_step, rng, unit_lengths)]
            micros = [[items[i] for i in idx] for idx in batches[step % steps_per_epoch]]
            batch = [x for micro in micros for x in micro]
            t0 = time.perf_counter()
            weight = objective.weight(batch)
            sums: dict[str, float] = {}
            loss_total = 0.0
            for k, micro in enumerate(micros):
                if not dist.mine(k):  # several processes: micro-batch k is process k mod world's
                    continue
                # the backward brings offloaded activations back itself, and runs the attention
                # kernels the forward picked
                with offloaded(), training_attention(model):
                    loss_sum, metrics = objective.loss(model, micro)
                (loss_sum / weight).backward()
                loss_total += float(loss_sum.detach())
                for key, v in metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(v)
            if hooks.regularizer:  # once per step: each process adds its 1/world share
                reg = hooks.regularizer(model)
                (reg / dist.world()).backward()
                sums["regularizer"] = float(reg.detach()) * len(batch) / dist.world()
            if dist.world() > 1:  # the whole batch's gradient and sums on every process
                dist.sum_grads(params)
                keys = sorted(set(sums if objective.metric_keys is None else objective.metric_keys)
                              | ({"regularizer"} if hooks.regularizer else set()))
                totals = dist.sum_floats([loss_total] + [sums.get(k2, 0.0) for k2 in keys])
                loss_total, sums = totals[0], dict(zip(keys, totals[1:]))
            loss = loss_total / weight
            if not math.isfinite(loss):
                raise TrainingDiverged(f"{desc}: loss is {loss} at step {step}; lower the "
                                       "learning rate (train.lr / spin.lr)")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            if not math.isfinite(grad_norm):
                # stop before the optimizer step: one non-finite gradient would poison the
                # adapter (and Adam's moments) for good, and the loss would turn NaN steps later
                raise TrainingDiverged(
                    f"{desc}: gradient norm is {grad_norm} at step {step} (loss {loss:.4g}, "
                    f"batch of {len(batch)} items, longest "
                    f"{max(map(objective.length, batch)) if objective.length else '?'} tokens); "
                    "lower the learning rate, or use model.dtype=float32 if this is bf16/fp16 "
                    "(or model.attn_implementation=eager on a GPU)")
            lr_now = opt.param_groups[0]["lr"]
            opt.step()
            if hooks.on_step:
                hooks.on_step(model, step)
            sched.step()
            opt.zero_grad(set_to_none=True)
            tokens = objective.tokens(batch)
            ph.tokens += tokens
            rec = {"step": step, "epoch": round((step + 1) / steps_per_epoch, 4), "loss": loss,
                   "lr": lr_now,
                   "grad_norm": grad_norm, "tokens": tokens,
                   "seconds": round(time.perf_counter() - t0, 4),
                   **{k2: v / len(batch) for k2, v in sums.items()}, **(extra or {})}
            records.append(rec)
            log.log(rec)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if (step + 1) % cfg.log_every == 0 or step == 0 or step + 1 == total:
                shown = " ".join(f"{k2}={v:.4g}" for k2, v in rec.items()
                                 if k2 not in ("step", "epoch", "tokens") and isinstance(v, float))
                tqdm.write(f"[{desc}] step {step + 1}/{total} epoch {rec['epoch']:.2f} {shown}")
            if on_step is not None and on_step(step):
                tqdm.write(f"[{desc}] stopped early after step {step + 1}/{total}")
                break
    bar.close()
    if cfg.gradient_checkpointing:
        set_checkpointing(model, False)
    model.eval()
    return records
