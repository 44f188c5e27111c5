"""Paired differences between models scored on the same problems.

Two models evaluated on the same n problems differ by far less noise than their two standard
errors suggest: most problems are right or wrong for both. The paired difference is the mean of
(correct − reference correct) over the problems both answered, with its standard error; gained
and lost count the problems that changed. ``spinlora report`` prints it for run folders,
``benchmarks/paired.py`` for any two samples files, and the SVAMP study's ``delta_vs_sft`` is it.

Samples files are what evaluation writes: ``eval/samples_MODEL_svamp.jsonl`` (keyed by the
problem's ``index``) and ``eval/samples_MODEL.jsonl`` for GSM8K (keyed by the question text);
a ``.gz`` copy reads the same.
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path


def read_samples(path: str | Path) -> dict:
    """A samples file (or its ``.gz``) as {problem key: sample}; ValueError where it is not
    one."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file (evaluation writes "
                                "eval/samples_MODEL_TASK.jsonl)")
    opener = gzip.open if p.suffix == ".gz" else open
    with opener(p, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    out, seen = {}, {}
    for i, r in enumerate(rows):
        key = r.get("index", r.get("question"))
        if key is None or "correct" not in r:
            raise ValueError(f"{p}: line {i + 1} has no 'index' (or 'question') or no "
                             "'correct': not an eval samples file")
        if "index" not in r:  # keyed by its text: a question asked twice stays two problems,
            seen[key] = seen.get(key, 0) + 1  # its k-th occurrence pairs with the other file's
            if seen[key] > 1:
                key = f"{key} [{seen[key]}]"
        out[key] = r
    return out


def differences(a: dict, b: dict) -> dict:
    """{problem key: correct(a) − correct(b)} over the problems both answered (−1, 0 or 1)."""
    keys = sorted(set(a) & set(b), key=str)
    return {k: int(a[k]["correct"]) - int(b[k]["correct"]) for k in keys}


def paired(a: dict, b: dict) -> tuple[float, float, int]:
    """Mean and standard error of correct(a) − correct(b) over the problems both answered."""
    return _summary(differences(a, b))


def _summary(d: dict) -> tuple[float, float, int]:
    """Mean, standard error and number of per-problem differences ({key: Δ}, ``differences``)."""
    if not d:
        raise ValueError("the two samples share no problem: nothing to pair")
    return (*mean_se(list(d.values())), len(d))


def mean_se(d: list[float]) -> tuple[float, float]:
    """Mean of per-problem differences and its standard error (0 for a single problem)."""
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def compare(reference: dict, other: dict) -> dict:
    """``other`` against ``reference`` on their shared problems: both accuracies, the paired
    difference and its standard error, and the problems gained and lost."""
    d = differences(other, reference)
    delta, se, n = _summary(d)
    keys = d.keys()
    gained, lost = sum(x == 1 for x in d.values()), sum(x == -1 for x in d.values())
    texts = all("output" in reference[k] and "output" in other[k] for k in keys)
    return {"n": n, "accuracy": sum(bool(other[k]["correct"]) for k in keys) / n,
            "reference_accuracy": sum(bool(reference[k]["correct"]) for k in keys) / n,
            "delta": delta, "delta_se": se, "gained": gained, "lost": lost,
            # answers written word for word the same: n for a run reproduced exactly
            "same_text": (sum(reference[k]["output"] == other[k]["output"] for k in keys)
                          if texts else None)}


def line(row: dict) -> str:
    """``Δ +1.3 ± 0.6 paired (+52 −39, n = 1000; 656 answers the same text)``, in points."""
    same = "" if row.get("same_text") is None else f"; {row['same_text']} answers the same text"
    return (f"Δ {100 * row['delta']:+.1f} ± {100 * row['delta_se']:.1f} paired "
            f"(+{row['gained']} −{row['lost']}, n = {row['n']}{same})")
