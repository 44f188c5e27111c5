"""Paired Δ against an SFT's answers, on all problems and on SVAMP's two parts, and the forms.

    python cmp.py SFT_SAMPLES OTHER_SAMPLES...

The forms are ``benchmarks/svamp_forms.py``'s (the operators of the scored equation); the
parts are the answers' own ``irrelevant_numbers`` flag (``benchmarks/paired.py --subset``).
"""
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[5]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

from spinlora.paired import paired, read_samples  # noqa: E402
from svamp_forms import answer_form  # noqa: E402


def part(rows: dict, irrelevant: bool) -> dict:
    return {k: r for k, r in rows.items() if r["irrelevant_numbers"] == irrelevant}


sft = read_samples(sys.argv[1])
for path in sys.argv[2:]:
    x = read_samples(path)
    d, se, n = paired(x, sft)
    (di, sei, _), (dr, ser, _) = (paired(part(x, f), part(sft, f)) for f in (True, False))
    forms = Counter(answer_form(r["output"]) for r in x.values())
    acc = sum(bool(r["correct"]) for r in x.values()) / len(x)
    same = sum(x[k]["output"] == sft[k]["output"] for k in x)
    print(f"{path}: acc {acc:.3f} d {100 * d:+.1f} ± {100 * se:.1f} n {n} "
          f"irr {100 * di:+.1f}±{100 * sei:.1f} rel {100 * dr:+.1f}±{100 * ser:.1f} "
          + " ".join(f"'{f}' {forms[f]}" for f in "-+/*") + f" same {same}")
