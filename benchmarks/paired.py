"""Paired accuracy differences between models scored on the same problems.

    python benchmarks/paired.py runs/demo/eval/samples_lora_sft_svamp.jsonl \\
        runs/demo/eval/samples_lora_spin_iter_1_svamp.jsonl
    python benchmarks/paired.py benchmarks/results/svamp/demo/irpo_128/samples_lora_sft_svamp.jsonl.gz \\
        benchmarks/results/svamp/demo/irpo_128/samples_lora_spin_iter_1_svamp.jsonl.gz --json

The first file is the reference (SFT, say); every other file is compared with it over the
problems both answered (matched by ``index``; ``.gz`` files are read as they are): accuracy,
the mean of (correct − reference correct) with its standard error, and how many problems were
gained and lost. This is the figure docs/svamp.md and the study's ``delta_vs_sft`` report.
"""
from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from svamp_study import paired  # noqa: E402


def samples(path: str) -> dict[int, dict]:
    """A run's ``samples_*.jsonl`` (or its ``.gz``), keyed by problem index."""
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"{p}: no such file (a run writes eval/samples_MODEL_TASK.jsonl)")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    missing = [i for i, r in enumerate(rows) if "index" not in r or "correct" not in r]
    if missing:
        raise SystemExit(f"{p}: line {missing[0] + 1} has no 'index' or 'correct': not an eval "
                         "samples file")
    return {r["index"]: r for r in rows}


def compare(reference: dict[int, dict], other: dict[int, dict]) -> dict:
    keys = set(reference) & set(other)
    if not keys:  # paired() would divide by zero
        raise SystemExit("the two samples files share no problem index")
    delta, se, n = paired(other, reference)
    gained = sum(1 for k in keys if other[k]["correct"] and not reference[k]["correct"])
    lost = sum(1 for k in keys if reference[k]["correct"] and not other[k]["correct"])
    return {"n": n, "accuracy": sum(bool(other[k]["correct"]) for k in keys) / n,
            "reference_accuracy": sum(bool(reference[k]["correct"]) for k in keys) / n,
            "delta": delta, "delta_se": se, "gained": gained, "lost": lost}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", help="samples file of the model to compare against")
    ap.add_argument("others", nargs="+", help="samples files of the models to compare")
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of lines")
    args = ap.parse_args(argv)
    ref = samples(args.reference)
    rows = []
    for path in args.others:
        row = {"file": path, **compare(ref, samples(path))}
        rows.append(row)
        if not args.json:
            print(f"{path}: {row['accuracy']:.1%} against {row['reference_accuracy']:.1%}, "
                  f"Δ {100 * row['delta']:+.1f} ± {100 * row['delta_se']:.1f} paired "
                  f"(+{row['gained']} −{row['lost']}, n = {row['n']})")
    if args.json:
        print(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
