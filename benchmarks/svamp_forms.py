"""Which operations the equations use: SVAMP's gold equations against each model's answers.

    python benchmarks/svamp_forms.py benchmarks/results/svamp_lr5e-4/extra/*/eval/*.gz

Each answer's form is the set of operators in the equation its score comes from
(``svamp.last_equation``: ``-``, ``+-``, ``+/`` …; ``none`` without one). A method that shifts the forms away from the gold ones
shows here before it shows in the accuracy (docs/svamp.md, "What was tried").
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

from spinlora.svamp import last_equation  # noqa: E402

OPS = re.compile(r"[-+*/]")


def form(equation: str) -> str:
    return "".join(sorted(set(OPS.findall(equation)))) or "none"


def answer_form(text: str) -> str:
    eq = last_equation(text)
    return form(eq[0]) if eq else "none"


def read(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("samples", nargs="+", type=Path, help="eval/samples_<model>_svamp.jsonl[.gz]")
    ap.add_argument("--gold", type=Path, default=ROOT.parent / "shared/data/svamp/SVAMP.json")
    ap.add_argument("--top", type=int, default=7)
    args = ap.parse_args()
    gold = Counter(form(r["Equation"]) for r in json.loads(args.gold.read_text()))
    keys = [k for k, _ in gold.most_common(args.top)]
    cols = {"gold": gold}
    for p in args.samples:
        name = f"{p.parent.parent.name}/{p.name.split('samples_')[1].split('_svamp')[0]}"
        cols[name] = Counter(answer_form(s["output"]) for s in read(p))
    extra = sorted({k for c in cols.values() for k, _ in c.most_common(args.top)} - set(keys))
    print("| form | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for k in keys + extra:
        print(f"| `{k}` | " + " | ".join(str(c.get(k, 0)) for c in cols.values()) + " |")


if __name__ == "__main__":
    main()
