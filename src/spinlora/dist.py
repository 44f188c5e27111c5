"""Data parallelism across processes, through accelerate's process state.

    torchrun --nproc_per_node 2 -m spinlora run configs/demo.yaml                    # CPU (gloo)
    accelerate launch --config_file configs/accelerate/ddp.yaml -m spinlora run CFG  # GPUs (NCCL)

Every process holds the whole model (the frozen base and the adapter). The work that one process
already does in independent units is dealt out unit by unit: generation batches, reference-pass
and scoring batches, multiple-choice batches, and the micro-batches of every optimizer step.
Unit k goes to process k mod world, and results are gathered back in the original order. Each
unit is computed exactly as a single process computes it (the same members, padding and sampling
seed), so generations are the same, and summing the adapter's gradients across processes
(all_reduce) before clipping gives every process the same optimizer step as one process with
the same global batch. Only the main process writes the run folder; the others read it.

Without a launcher (WORLD_SIZE unset or 1) nothing here touches torch.distributed.
"""
from __future__ import annotations

import os
from typing import Any

import torch

_STATE: Any = None


def state():
    """accelerate's PartialState when launched with several processes, else None."""
    global _STATE
    if _STATE is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        # cpu=True picks gloo; on GPUs accelerate picks NCCL and one device per local rank
        _STATE = PartialState(cpu=not torch.cuda.is_available())
    return _STATE


def world() -> int:
    return state().num_processes if state() is not None else 1


def rank() -> int:
    return state().process_index if state() is not None else 0


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device | None:
    """This process's device when launched with several processes (None: choose as usual)."""
    return state().device if state() is not None else None


def barrier() -> None:
    if world() > 1:
        state().wait_for_everyone()


def mine(k: int) -> bool:
    """Whether unit ``k`` (a batch, a micro-batch) is this process's."""
    return k % world() == rank()


def gather(local: dict[int, Any], n: int) -> list:
    """Every process's ``{index: result}`` merged into one list of ``n`` results, in order."""
    if world() == 1:
        return [local[i] for i in range(n)]
    from accelerate.utils import gather_object

    merged: dict[int, Any] = {}
    for part in gather_object([local]):
        merged.update(part)
    return [merged[i] for i in range(n)]


def sum_floats(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over the processes."""
    if world() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device())
    torch.distributed.all_reduce(t)
    return t.tolist()


def sum_grads(params: list[torch.Tensor]) -> None:
    """Sum the gradients of ``params`` over the processes, in place (one flat all_reduce; a
    parameter that got no gradient on a process counts as zero there)."""
    if world() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    torch.distributed.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
        offset += n


def broadcast(obj: Any) -> Any:
    """The main process's ``obj`` on every process (a plan that must agree everywhere)."""
    if world() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
