"""Peak memory and time of one SPIN training micro-batch with the LM head in chunks vs at once.

    python benchmarks/logit_chunks.py                         # SmolLM2-135M on this machine
    python benchmarks/logit_chunks.py --model qwen.gguf --pairs 16 --out result.json   # on a GPU

One forward + backward of the SPIN loss on ``--pairs`` pairs (gold and generated answers of
``--answer-tokens`` each on a shared prompt), LoRA q/k/v r 8, once with ``LOGIT_CHUNK_TOKENS``
unset (tokens × vocabulary fp32 logits at once) and once per chunk size. Each setting runs in its
own process, so peak RSS on a CPU is that setting's alone; on CUDA the figure is
max-allocated. Memory is the peak over the state before the first step (model, adapter, inputs);
time is the mean of the steps after a warm-up step.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import emit

CHILD = r"""
import json, sys, time, torch
import spinlora.scoring as L
from spinlora.accounting import MemoryMeter
from spinlora.adapters import attach
from spinlora.config import AdapterConfig, ModelConfig
from spinlora.losses import spin_loss
from spinlora.models import load_model, pick_device

model_name, dtype, pairs, n_ans, chunk, steps = sys.argv[1:7]
L.LOGIT_CHUNK_TOKENS = None if chunk == "none" else int(chunk)
model, tok = load_model(ModelConfig(name=model_name, dtype=dtype))
model = attach(model, AdapterConfig())
device = next(model.parameters()).device
g = torch.Generator().manual_seed(0)
vocab = model.config.vocab_size
prompts = [torch.randint(100, vocab - 100, (96,), generator=g).tolist() for _ in range(int(pairs))]
answers = [[torch.randint(100, vocab - 100, (int(n_ans),), generator=g).tolist() for _ in range(2)]
           for _ in prompts]
ref = torch.zeros(int(pairs), device=device)
model.train()
def step():
    both = L.score_answers(model, prompts, answers, tok.pad_token_id)[0].view(-1, 2)
    loss, _, _ = spin_loss(both[:, 0], both[:, 1], ref, ref, 0.1, "dpop")
    loss.sum().backward()
    model.zero_grad(set_to_none=True)
meter = MemoryMeter(device)  # baseline: model, adapter and inputs, before any step
meter.start()
step()  # warm-up (allocator, kernels); its peak counts, its time does not
if device.type == "cuda":
    torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(int(steps)):
    step()
if device.type == "cuda":
    torch.cuda.synchronize()
secs = (time.perf_counter() - t0) / int(steps)
print(json.dumps({"chunk": chunk, "peak_over_start_MB": round((meter.peak() - meter.baseline) / 2**20),
                  "seconds_per_step": round(secs, 3), "device": str(device), "vocab": vocab,
                  "scored_tokens_per_step": 2 * int(pairs) * int(n_ans)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--answer-tokens", type=int, default=256)
    ap.add_argument("--chunks", default="none,1024,256")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = []
    for chunk in args.chunks.split(","):
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", CHILD, args.model, args.dtype, str(args.pairs),
                              str(args.answer_tokens), chunk, str(args.steps)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            rows.append({"chunk": chunk, "error": res.stderr.strip().splitlines()[-1]})
            continue
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]) | {
            "process_seconds": round(time.perf_counter() - t0, 1)})
        print(json.dumps(rows[-1]), flush=True)
    emit({"benchmark": "logit_chunks", "model": args.model, "pairs": args.pairs,
          "answer_tokens": args.answer_tokens, "rows": rows}, args.out, echo=False)


if __name__ == "__main__":
    main()
