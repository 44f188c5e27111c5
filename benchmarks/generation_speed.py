"""Benchmark: generation tokens/s, spinlora's generator against HF ``generate``; prints JSON.

    python benchmarks/generation_speed.py                                  # SmolLM2, hf vs auto
    python benchmarks/generation_speed.py --model qwen.gguf --prompts 64   # the 0.5B model
    python benchmarks/generation_speed.py --prompts 16 --samples 8 --sides continuous  # RL's groups

The same seeded GSM8K training prompts in the chat template, the same model object (base + a
LoRA on q/k/v, as the SPIN opponent runs; ``--adapter`` loads a trained one), the same
``--max-new-tokens`` and the same batch (``--batch``), greedy, one side after the other:

- ``hf``: HF ``generate`` as its users write it: the model loaded with
  ``from_pretrained(dtype=...)`` (transformers' default attention, sdpa), left-padded batches of
  the tokenised chat prompts in dataset order, the default (dynamic) cache;
- ``auto``: what spinlora picks on this machine with no generation settings but the length and
  the batch: its dtype (``--dtype auto``: bf16 on CPUs with bf16 units and on GPUs), its
  attention (fp32-score eager for bf16 on a CPU, decoding steps included), its cache and
  decoding loop (``drop``), and on a bf16 CPU model the frozen linear layers from oneDNN-packed
  weights and the LM head's contiguous input (docs/precision.md);
- ``dynamic``: spinlora's generator with ``generation.cache: dynamic``, ``decode: hf`` (prompts grouped by
  length, the in-place growing cache, a shared prefix run once);
- ``drop``: ``generation.decode: drop``: spinlora's decoding loop on the growing cache, batch
  by batch, in which a finished row leaves its batch (HF ``generate`` decodes every row until
  the batch's longest answer ends);
- ``continuous``: ``generation.decode: continuous``: continuous batching, the slot of a finished
  row refilled with the next prompt;
- ``static``: ``generation.cache: static``: widths bucketed, a preallocated cache, so that on
  CUDA transformers compiles the decode step (torch.compile, CUDA graphs). Its first pass
  includes compilation: every side runs ``--repeats`` times and both the first and the best pass
  are printed.

Tokens counted are the new tokens up to and including the end-of-turn token; ``same_outputs``
says how many answers equal the ``hf`` side's (greedy numerics differ slightly between cache
layouts). The ratio is tokens/s of a side over ``hf``'s.
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
from spinlora.accounting import environment  # noqa: E402
from spinlora.adapters import attach, load  # noqa: E402
from spinlora.config import RunConfig  # noqa: E402
from spinlora.data import ChatFormat, load_rows, subset  # noqa: E402
from spinlora.generate import generate  # noqa: E402
from spinlora.models import load_model  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hf_side(model, tok, texts: list[str], batch: int, max_new: int, stop_ids: list[int]):
    """HF generate in dataset order; returns the new token ids per prompt."""
    tok.padding_side = "left"
    device = next(model.parameters()).device
    outs = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tok(texts[i:i + batch], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(device)
            seqs = model.generate(**enc, max_new_tokens=max_new, do_sample=False,
                                  eos_token_id=stop_ids, pad_token_id=tok.pad_token_id)
            for row in seqs[:, enc.input_ids.shape[1]:].tolist():
                cut = next((k + 1 for k, t in enumerate(row) if t in stop_ids), len(row))
                outs.append(row[:cut])
    return outs


def hf_model(args, device: torch.device, dtype: torch.dtype):
    """The model as HF users load it (transformers' default attention) with the same adapter."""
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from spinlora.adapters.lora import peft_config
    from spinlora.models import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(resolve_model_path(args.model), dtype=dtype)
    base = base.to(device).eval()
    if args.adapter:
        return PeftModel.from_pretrained(base, args.adapter).eval()
    return get_peft_model(base, peft_config(RunConfig().adapter)).eval()  # B = 0: the base


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--dtype", default="auto",
                   help="both sides; auto: bf16 on GPUs and CPUs with bf16 units, else fp32")
    p.add_argument("--adapter", help="a trained adapter (default: a fresh LoRA on q/k/v)")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--sides", default="hf,auto",
                   help="hf, auto, dynamic, drop, continuous, static, llamacpp")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--samples", type=int, default=1,
                   help="each prompt this many times in a row, as RL's groups and the SPIN "
                        "opponent's samples give them (greedy: every copy the same work)")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/gsm8k/train.jsonl"))
    p.add_argument("--out")
    args = p.parse_args()
    cfg = RunConfig()
    cfg.model.name, cfg.model.dtype = args.model, args.dtype
    model, tok = load_model(cfg.model)
    model = load(model, args.adapter) if args.adapter else attach(model, cfg.adapter)
    model.eval()
    device = next(model.parameters()).device
    plain = model
    if "hf" in args.sides.split(",") and model.config._attn_implementation != "sdpa":
        plain = hf_model(args, device, next(model.parameters()).dtype)
    fmt = ChatFormat(tok)
    rows = subset(load_rows(args.data, cfg.data, "train"), args.prompts, 0)
    prompt_ids = [fmt.prompt_ids(r["prompt"]) for r in rows]
    texts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                     add_generation_prompt=True) for r in rows]
    prompt_ids = [p for p in prompt_ids for _ in range(args.samples)]
    texts = [t for t in texts for _ in range(args.samples)]
    same = sum(tok(t, add_special_tokens=False).input_ids == ids for t, ids in zip(texts, prompt_ids))
    assert same == len(texts), "the HF side's prompts must be the same tokens"
    stop_ids = fmt.stop_ids
    result = {"benchmark": "generation tokens/s", "args": vars(args),
              "environment": environment(), "device": str(device),
              "dtype": str(next(model.parameters()).dtype),
              "attention": {"hf": plain.config._attn_implementation,
                            "spinlora": model.config._attn_implementation}, "sides": {}}
    reference = None
    for side in args.sides.split(","):
        passes = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t0 = time.perf_counter()
            if side == "hf":
                outs = hf_side(plain, tok, texts, args.batch, args.max_new_tokens, stop_ids)
            else:
                gcfg = RunConfig().generation  # auto: spinlora's own defaults
                gcfg.max_new_tokens, gcfg.batch_size = args.max_new_tokens, args.batch
                if side == "llamacpp":
                    gcfg.engine = "llamacpp"
                elif side != "auto":  # a named loop on the growing cache, or HF generate
                    loop = side in ("drop", "continuous")
                    gcfg.cache = "dynamic" if loop else side
                    gcfg.decode = side if loop else "hf"
                gens, _ = generate(model, tok, prompt_ids, gcfg, stop_ids, desc=side)
                outs = [g.ids for g in gens]
            _sync(device)
            seconds = time.perf_counter() - t0
            tokens = sum(len(o) for o in outs)
            passes.append({"seconds": round(seconds, 2), "tokens": tokens,
                           "tokens_per_s": round(tokens / seconds, 1)})
            if device.type == "cuda":
                passes[-1]["cuda_max_allocated_MB"] = round(
                    torch.cuda.max_memory_allocated(device) / 2**20)
        reference = outs if side == "hf" else reference
        best = max(passes, key=lambda x: x["tokens_per_s"])
        entry = {"passes": passes, "first": passes[0], "best": best}
        if reference is not None and side != "hf":
            entry["same_outputs"] = f"{sum(a == b for a, b in zip(outs, reference))}/{len(outs)}"
        result["sides"][side] = entry
        print(side, entry, flush=True)
    if "hf" in result["sides"]:
        hf = result["sides"]["hf"]["best"]["tokens_per_s"]
        result["tokens_per_s_vs_hf"] = {s: round(e["best"]["tokens_per_s"] / hf, 2)
                                        for s, e in result["sides"].items() if s != "hf"}
    emit(result, args.out)


if __name__ == "__main__":
    main()
