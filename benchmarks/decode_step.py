"""Benchmark: one decoding step of 32 sequences, spinlora's torch step against a compiled one and llama.cpp's; prints JSON.

    python benchmarks/decode_step.py                  # SmolLM2 bf16, 32 x 120-token prompts, 128 steps
    python benchmarks/decode_step.py --sides torch,compiled,llamacpp
    python benchmarks/decode_step.py --kv 30 --flash 0  # llama.cpp with other context settings
    python benchmarks/decode_step.py --dtype float32 --rows 64 --prompt-tokens 70 --steps 64 \
        --sides torch,torch_plain     # fp32: packed weights against F.linear everywhere
    python benchmarks/decode_step.py --rows 64 --prompt-tokens 200 --sides torch --mmap-threshold 0

The process runs under a run's allocator (the 4 MB mmap threshold, ``--mmap-threshold 0`` for
glibc's own), and the torch side counts the minor page faults of its decoding steps: a buffer
of 4 MB or more made anew every step is mapped and faulted in every step.

Both sides: the embedded model in bf16 (``--dtype``) with no adapter, the same seeded random
prompts (32 rows of 120 tokens), one prefill, then 128 greedy steps with every row running (no
stop tokens). The torch side is what ``generate`` runs on a bf16 CPU model (packed linear
layers, ``spinlora_cpu`` attention, the growing cache; in fp32 the packed layers with SDPA),
and ``torch_plain`` the same with ``generation.packed=false``, its greedy tokens compared;
the llama.cpp side is ``llamacpp.Engine`` on the engine file, one context with a cache per
sequence. The compiled side is the candidate of a compiled step on a
CPU: ``torch.compile`` (inductor, ``freezing``: the frozen weights become oneDNN-packed constants
of the graph) of the model's forward over transformers' static cache, the prompt's length plus
``--steps`` long; its first two steps compile and are timed apart (``compile_seconds``), its
decoding figures are the other steps'. Prefill and decoding are timed apart. llama.cpp context
settings: ``--kv`` the KV cache's GGML type (1 f16, 30 bf16, 0 f32), ``--flash`` flash attention,
``--unified`` one KV buffer for all sequences, ``--ubatch`` micro-batch tokens.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _common import emit  # noqa: E402
from spinlora.accounting import environment, fix_mmap_threshold  # noqa: E402
from spinlora.config import GenerationConfig, ModelConfig  # noqa: E402
from spinlora.generate import greedy, growing_cache, packed_linears  # noqa: E402
from spinlora.models import load_model, release_workspace  # noqa: E402


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def torch_side(model, ids: torch.Tensor, steps: int, packed: bool = True) -> dict:
    rows, length = ids.shape
    with torch.inference_mode(), packed_linears(model, GenerationConfig(packed=packed)):
        cache = growing_cache(model)
        t0 = time.perf_counter()
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]
        prefill = time.perf_counter() - t0
        tok = greedy(logits)
        toks = [tok]
        f0, t0 = _faults(), time.perf_counter()
        for step in range(steps):
            pos = torch.full((rows, 1), length + step)
            logits = model(input_ids=tok[:, None], position_ids=pos, past_key_values=cache,
                           use_cache=True).logits[:, -1]
            tok = greedy(logits)
            toks.append(tok)
        decode, faults = time.perf_counter() - t0, _faults() - f0
    release_workspace()
    # the greedy tokens, to compare the two torch sides (dropped from the JSON)
    return {**_figures(rows, length, steps, prefill, decode),
            "page_faults_per_step": round(faults / steps), "_tokens": torch.stack(toks)}


def compiled_side(model, ids: torch.Tensor, steps: int) -> dict:
    import torch._inductor.config as inductor_config
    from transformers import StaticCache

    rows, length = ids.shape
    cache = StaticCache(config=model.config, max_cache_len=length + steps)
    freezing, inductor_config.freezing = inductor_config.freezing, True
    try:
        step = torch.compile(model.forward, dynamic=False)
        with torch.inference_mode():
            t0 = time.perf_counter()
            logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1,
                           cache_position=torch.arange(length)).logits[:, -1]
            prefill = time.perf_counter() - t0
            tok = logits.float().argmax(-1)
            times = []
            for s in range(steps):
                t0 = time.perf_counter()
                pos = torch.tensor([length + s])
                logits = step(input_ids=tok[:, None], position_ids=pos.expand(rows, 1),
                              past_key_values=cache, use_cache=True, cache_position=pos).logits[:, -1]
                tok = logits.float().argmax(-1)
                times.append(time.perf_counter() - t0)
    finally:
        inductor_config.freezing = freezing
    out = _figures(rows, length, steps - 2, prefill, sum(times[2:]))
    out["compile_seconds"] = round(sum(times[:2]), 1)
    return out


def llamacpp_side(path: Path, ids: torch.Tensor, steps: int, args) -> dict:
    import llama_cpp as L

    from spinlora.llamacpp import Engine

    rows, length = ids.shape
    eng = Engine.get(path, torch.get_num_threads())
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_seq_max = 512 * rows, rows
    cp.n_batch = cp.n_ubatch = args.ubatch
    cp.n_threads = cp.n_threads_batch = torch.get_num_threads()
    cp.kv_unified, cp.flash_attn_type = bool(args.unified), args.flash
    cp.type_k = cp.type_v = args.kv
    ctx = L.llama_init_from_model(eng.model, cp)
    batch = L.llama_batch_init(args.ubatch, 0, 1)
    try:
        items = [(int(t), k, s, k == length - 1) for s in range(rows)
                 for k, t in enumerate(ids[s].tolist())]
        t0 = time.perf_counter()
        outs = [eng._decode(ctx, batch, items[i:i + args.ubatch]).copy()
                for i in range(0, len(items), args.ubatch)]
        prefill = time.perf_counter() - t0
        last = [int(x) for x in outs[-1].argmax(1)] if len(outs[-1]) == rows else [1] * rows
        t0 = time.perf_counter()
        for step in range(steps):
            logits = eng._decode(ctx, batch, [(last[s], length + step, s, True) for s in range(rows)])
            last = logits.argmax(1).tolist()
        decode = time.perf_counter() - t0
    finally:
        L.llama_batch_free(batch)
        L.llama_free(ctx)
    return _figures(rows, length, steps, prefill, decode)


def _figures(rows, length, steps, prefill, decode) -> dict:
    return {"prefill_tokens_per_s": round(rows * length / prefill, 1),
            "decode_tokens_per_s": round(rows * steps / decode, 1),
            "ms_per_step": round(decode / steps * 1000, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, default=120)
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--sides", default="torch,llamacpp")
    p.add_argument("--kv", type=int, default=1)
    p.add_argument("--flash", type=int, default=1)
    p.add_argument("--unified", type=int, default=0)
    p.add_argument("--ubatch", type=int, default=2048)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--mmap-threshold", type=int, default=1,
                   help="1: the 4 MB mmap threshold a run fixes (accounting.fix_mmap_threshold); "
                        "0: glibc's own")
    p.add_argument("--out")
    args = p.parse_args()
    threshold = fix_mmap_threshold() if args.mmap_threshold else None
    model, _ = load_model(ModelConfig(dtype=args.dtype))
    ids = torch.randint(100, 40000, (args.rows, args.prompt_tokens),
                        generator=torch.Generator().manual_seed(0))
    result = {"benchmark": "decode step", "args": vars(args), "environment": environment(),
              "malloc_mmap_threshold": threshold, "sides": {}}
    first = None  # the first torch side's greedy tokens: the other torch side must match them
    for side in args.sides.split(","):
        if side in ("torch", "torch_plain"):  # torch_plain: generation.packed=false
            result["sides"][side] = torch_side(model, ids, args.steps, side == "torch")
        elif side == "compiled":
            result["sides"][side] = compiled_side(model, ids, args.steps)
        else:
            from spinlora.llamacpp import engine_file

            result["sides"][side] = llamacpp_side(engine_file(model), ids, args.steps, args)
        tokens = result["sides"][side].pop("_tokens", None)
        if tokens is not None and first is not None:
            result["sides"][side]["greedy_tokens_same_as_first_torch_side"] = torch.equal(
                tokens, first)
        elif tokens is not None:
            first = tokens
        print(side, result["sides"][side], flush=True)
    emit(result, args.out)


if __name__ == "__main__":
    main()
