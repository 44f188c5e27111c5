"""Rescore saved GSM8K generations (``eval/samples_<model>.jsonl``) with lm-evaluation-harness's
``strict-match`` and ``flexible-extract`` exactly (``spinlora.evaluate.gsm8k.lm_eval_*``).

    python benchmarks/rescore_gsm8k.py --test ../shared/data/gsm8k/test.jsonl \
        --out benchmarks/results/spin_quality/lm_eval_rescored.json RUN/eval/samples_*.jsonl

The gold answer text of each sample is looked up by its question in the test file.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import emit

from spinlora.evaluate.choice import stderr
from spinlora.evaluate.gsm8k import lm_eval_filter, lm_eval_match


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("samples", nargs="+")
    ap.add_argument("--test", default="../shared/data/gsm8k/test.jsonl")
    ap.add_argument("--out")
    args = ap.parse_args()
    gold = {}
    for line in open(args.test):
        row = json.loads(line)
        gold[row["question"]] = row["answer"]
    rows = []
    for path in args.samples:
        samples = [json.loads(line) for line in open(path)]
        n = len(samples)
        strict = sum(lm_eval_match(lm_eval_filter(s["output"], False), gold[s["question"]])
                     for s in samples) / n
        flexible = sum(lm_eval_match(lm_eval_filter(s["output"], True), gold[s["question"]])
                       for s in samples) / n
        headline = sum(s["correct"] for s in samples) / n
        se = lambda p: stderr(p, n)  # noqa: E731
        rows.append({"samples": str(Path(path)), "n": n, "headline": headline,
                     "strict_match": strict, "strict_stderr": se(strict),
                     "flexible_extract": flexible, "flexible_stderr": se(flexible)})
        print(f"{path}: n={n} headline {100 * headline:.1f} | strict-match {100 * strict:.1f} ± "
              f"{100 * se(strict):.1f} | flexible-extract {100 * flexible:.1f} ± "
              f"{100 * se(flexible):.1f}")
    emit({"benchmark": "gsm8k lm-eval rescoring", "rows": rows}, args.out, echo=False)


if __name__ == "__main__":
    main()
