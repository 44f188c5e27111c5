"""Benchmark: one prefill of SVAMP prompts that keeps the last position's logits, with and
without the LM head's contiguous input (``models.contiguous_head_input``); prints JSON.

    python benchmarks/prefill_memory.py --out benchmarks/results/prefill_memory_svamp64.json

Each side loads the model as spinlora does (``model.dtype: auto``), then generates one token
for the same ``--prompts`` SVAMP problems in one batch: the prefill.

- ``plain``: the head's pre-hook removed and no packed weights, so the head's ``F.linear`` gets
  the strided ``hidden[:, -1:, :]`` that ``logits_to_keep=1`` hands it (pytorch/pytorch#151934);
- ``contiguous``: the hook, no packed weights: the fix alone;
- ``auto``: what spinlora runs (the hook, and on a bf16 CPU model oneDNN-packed weights, whose
  kernel takes a strided input without the copy as well).

Peak RSS is the process's ``ru_maxrss``, hence one process a side; ``seconds`` is the generate
call.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _common import emit  # noqa: E402


def side(name: str, prompts: int) -> dict:
    from spinlora.accounting import current_rss, environment
    from spinlora.config import RunConfig
    from spinlora.data import ChatFormat
    from spinlora.generate import generate
    from spinlora.models import load_model
    from spinlora.svamp import load_test

    import spinlora.generate

    cfg = RunConfig()
    model, tok = load_model(cfg.model)
    if name == "plain":
        model.get_output_embeddings()._forward_pre_hooks.clear()
    if name != "auto":
        spinlora.generate.packs_linears = lambda model, cfg=None: False
    fmt = ChatFormat.from_config(tok, cfg.data)
    ids = [fmt.prompt_ids(r["prompt"]) for r in load_test(str(ROOT.parent / "shared/data"))[:prompts]]
    g = dataclasses.replace(cfg.generation, max_new_tokens=1, batch_size=prompts)
    baseline = current_rss()
    t0 = time.perf_counter()
    generate(model, tok, ids, g, fmt.stop_ids, desc=name)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"side": name, "dtype": str(model.dtype), "prompts": prompts,
            "seconds": round(seconds, 2), "post_load_rss_GB": round(baseline / 1e9, 2),
            "peak_rss_GB": round(peak / 1e9, 2), "git_commit": environment()["git_commit"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--side", choices=["plain", "contiguous", "auto"], help="run one side, print its JSON")
    p.add_argument("--out")
    args = p.parse_args()
    if args.side:
        print(json.dumps(side(args.side, args.prompts)))
        return
    sides = []
    for name in ("plain", "contiguous", "auto"):  # one process each: ru_maxrss is per process
        r = subprocess.run([sys.executable, __file__, "--side", name, "--prompts", str(args.prompts)],
                           capture_output=True, text=True, check=True)
        sides.append(json.loads(r.stdout.strip().splitlines()[-1]))
    emit({"benchmark": "prefill with logits_to_keep=1", "sides": sides}, args.out)


if __name__ == "__main__":
    main()
