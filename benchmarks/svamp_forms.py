"""Which operations the equations use: SVAMP's gold equations against each model's answers.

    python benchmarks/svamp_forms.py benchmarks/results/svamp_lr5e-4/extra/*/eval/*.gz
    python benchmarks/svamp_forms.py --numbers benchmarks/results/svamp_s47/K3/*.gz
    python benchmarks/svamp_forms.py --pairs benchmarks/results/svamp_s66/I1/spin_iter_*_generations.jsonl.gz

Each answer's form is the set of operators in the equation its score comes from
(``svamp.last_equation``: ``-``, ``+-``, ``+/`` …; ``none`` without one). A method that shifts the forms away from the gold ones
shows here before it shows in the accuracy (docs/svamp.md, "What was tried").

``--numbers`` sorts each model's answers instead by the numbers their equation uses against the
problem's and the gold equation's (``number_verdict``), apart for the problems with an
irrelevant number and the rest: whether a model fails at choosing the numbers or at combining
them (docs/svamp.md, "Where the errors are").

``--pairs`` reads a SPIN iteration's pairs (``spin/iter_N/generations.jsonl``) and counts them by
how many of the problem's numbers the preferred answer's equation uses against the rejected
one's (``pair_direction``): which way a preference pushes the choice of numbers (docs/svamp.md,
"Own-correct SPIN on the varied rows").
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from spinlora.svamp import equation_side, last_equation, load_test, number_values  # noqa: E402

OPS = re.compile(r"[-+*/]")


def form(equation: str) -> str:
    return "".join(sorted(set(OPS.findall(equation)))) or "none"


def answer_form(text: str) -> str:
    eq = last_equation(text)
    return form(eq[0]) if eq else "none"


VERDICTS = ("right", "no equation", "a number not in the problem", "an irrelevant number",
            "fewer numbers than the gold", "the gold's numbers, combined wrong")


def number_verdict(sample: dict, problem: str, gold_equation: str) -> str:
    """What an answer's equation does with the problem's numbers: ``right`` (its score), else
    the first of: ``no equation``, ``a number not in the problem``, ``an irrelevant number``
    (one the problem states and the gold equation does not use), ``fewer numbers than the gold``,
    ``the gold's numbers, combined wrong``. Numbers are compared as values."""
    if sample["correct"]:
        return "right"
    eq = last_equation(sample["output"])
    if not eq:
        return "no equation"
    used, stated, gold = (set(number_values(t)) for t in (eq[0], problem, gold_equation))
    if used - stated:
        return "a number not in the problem"
    if used - gold:
        return "an irrelevant number"
    return "fewer numbers than the gold" if gold - used else "the gold's numbers, combined wrong"


def used_numbers(text: str, problem: str) -> set[float]:
    """The problem's numbers that the equation ``text`` is scored by uses (as values)."""
    eq = last_equation(text)
    return set(number_values(eq[0])) & set(number_values(problem)) if eq else set()


def pair_direction(pair: dict) -> str:
    """``fewer``, ``more`` or ``as many``: the problem's numbers in the preferred answer's
    equation (``chosen``) against the rejected one's (``generated``)."""
    chosen, rejected = (len(used_numbers(pair[k], pair["prompt"])) for k in ("chosen", "generated"))
    return "fewer" if chosen < rejected else "more" if chosen > rejected else "as many"


def pairs_table(paths: list[Path]) -> None:
    print("| pairs | the preferred answer uses fewer of the problem's numbers | more | as many |")
    print("|---|---|---|---|")
    for p in paths:
        c = Counter(pair_direction(r) for r in read(p))
        print(f"| {p.parent.name}/{p.name.split('_generations')[0]} ({sum(c.values())}) | "
              f"{c['fewer']} | {c['more']} | {c['as many']} |")


def numbers_table(paths: list[Path], data_root: Path) -> None:
    problems = load_test(data_root)
    cols = {}
    for p in paths:
        name = label(p)
        counts = Counter()
        for s in read(p):
            row = problems[s["index"]]
            counts[(bool(s["irrelevant_numbers"]),
                    number_verdict(s, row["prompt"], equation_side(row["answer"])))] += 1
        cols[name] = counts
    print("| problems | the answer's equation | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for irrelevant, kind in ((True, "with an irrelevant number"), (False, "without")):
        for v in VERDICTS:
            if any(c[(irrelevant, v)] for c in cols.values()):
                print(f"| {kind} | {v} | " + " | ".join(str(c[(irrelevant, v)])
                                                      for c in cols.values()) + " |")


def label(path: Path) -> str:
    """``run/model`` for ``run/eval/samples_<model>_svamp.jsonl.gz`` or a results folder's
    ``run/samples_<model>_svamp.jsonl.gz``."""
    run = path.parent.parent if path.parent.name == "eval" else path.parent
    return f"{run.name}/{path.name.split('samples_')[1].split('_svamp')[0]}"


def read(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("samples", nargs="+", type=Path, help="eval/samples_<model>_svamp.jsonl[.gz]")
    ap.add_argument("--gold", type=Path, default=ROOT.parent / "shared/data/svamp/SVAMP.json")
    ap.add_argument("--top", type=int, default=7)
    ap.add_argument("--numbers", action="store_true",
                    help="sort the answers by the numbers their equation uses (number_verdict)")
    ap.add_argument("--pairs", action="store_true",
                    help="the files are SPIN pairs (spin/iter_N/generations.jsonl[.gz]): count "
                         "them by the numbers the preferred answer uses against the rejected one")
    args = ap.parse_args()
    if args.pairs:
        return pairs_table(args.samples)
    if args.numbers:
        return numbers_table(args.samples, args.gold.parent.parent)
    gold = Counter(form(r["Equation"]) for r in json.loads(args.gold.read_text()))
    keys = [k for k, _ in gold.most_common(args.top)]
    cols = {"gold": gold}
    for p in args.samples:
        name = label(p)
        cols[name] = Counter(answer_form(s["output"]) for s in read(p))
    extra = sorted({k for c in cols.values() for k, _ in c.most_common(args.top)} - set(keys))
    print("| form | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for k in keys + extra:
        print(f"| `{k}` | " + " | ".join(str(c.get(k, 0)) for c in cols.values()) + " |")


if __name__ == "__main__":
    main()
