"""Benchmark: evaluation speed on the embedded model (examples/s per task); prints JSON.

    python benchmarks/eval_speed.py                                   # the issue's targets:
        # all of WinoGrande dev (1267) + ARC-Challenge test (1172), and GSM8K 5-shot on 100
    python benchmarks/eval_speed.py --tasks hellaswag mmlu --limit 200

Log-likelihood tasks score each question's shared context once (KV cache repeated per choice);
GSM8K uses the batched, length-grouped KV-cache generator of the SPIN stage with lm-eval's stop
strings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _common import emit  # noqa: E402
from spinlora.accounting import Accountant, environment  # noqa: E402
from spinlora.config import RunConfig  # noqa: E402
from spinlora.data import ChatFormat, build_examples, load_rows, subset  # noqa: E402
from spinlora.evaluate import evaluate_gsm8k  # noqa: E402
from spinlora.evaluate.choice import evaluate_choice_task  # noqa: E402
from spinlora.evaluate.gsm8k import fewshot_draws  # noqa: E402
from spinlora.evaluate.tasks import load_task  # noqa: E402
from spinlora.models import load_model, pick_device  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["winogrande", "arc_challenge", "gsm8k"])
    p.add_argument("--limit", type=int, default=None, help="per multiple-choice task (None: all)")
    p.add_argument("--gsm8k-limit", type=int, default=100)
    p.add_argument("--gsm8k-shots", type=int, default=5)
    p.add_argument("--gsm8k-fewshot", choices=["fixed", "per_question"], default="fixed",
                   help="fixed: one exemplar set shared by all questions (the figures in "
                        "results/eval_speed.json); per_question: lm-eval's draws")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--gen-batch-size", type=int, default=32)
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out")
    args = p.parse_args()
    cfg = RunConfig()
    cfg.model.name = args.model
    cfg.generation.max_new_tokens = args.max_new_tokens
    cfg.generation.batch_size = args.gen_batch_size
    model, tok = load_model(cfg.model)
    result = {"benchmark": "evaluation speed", "args": vars(args), "environment": environment(),
              "tasks": {}}
    for task in args.tasks:
        t0 = time.perf_counter()
        if task == "gsm8k":
            fmt = ChatFormat(tok)
            train = load_rows(str(Path(args.data_root) / "gsm8k" / "train.jsonl"), cfg.data, "train")
            test = subset(load_rows(str(Path(args.data_root) / "gsm8k" / "test.jsonl"), cfg.data,
                                    "test"), args.gsm8k_limit, 0)
            examples, _ = build_examples(test, fmt, cfg.data)
            shots = fewshot_draws(train, len(examples), args.gsm8k_shots,
                                  per_question=args.gsm8k_fewshot == "per_question")
            r = evaluate_gsm8k(model, tok, fmt, examples, cfg.generation,
                               Accountant(pick_device(cfg.model.device)), "base", shots, "plain")
            r.pop("samples")
            secs = time.perf_counter() - t0
            res = {"n": r["n"], "shots": args.gsm8k_shots, "fewshot": args.gsm8k_fewshot,
                   "acc_strict": r["accuracy_strict"],
                   "acc_flexible": r["accuracy_flexible"], "seconds": round(secs, 1),
                   "examples_per_s": round(r["n"] / secs, 3)}
        else:
            items = subset(load_task(task, args.data_root), args.limit, 0)
            r = evaluate_choice_task(model, tok, task, items)
            res = {k: r[k] for k in ("n", "acc", "acc_stderr", "acc_norm", "seconds",
                                     "examples_per_s")}
            if "acc_macro" in r:
                res["acc_macro"] = r["acc_macro"]
        result["tasks"][task] = res
        print(json.dumps({task: res}), flush=True)
    emit(result, args.out)


if __name__ == "__main__":
    main()
