"""Whether a model trained with ``data.label_answer`` names what each SVAMP question asks, and
how its verdicts compare with another model's on the same problems, by whether the label matched.

    python benchmarks/svamp_labels.py LABELLED_SAMPLES.jsonl.gz REFERENCE_SAMPLES.jsonl.gz

A label is the text before ":" on the answer's first line; it matches when it equals
``data.asked_object`` of the problem ("none expected": the question has no "how many X" /
"how much X"). Prints, for the 447 problems with an irrelevant number and the 553 without, how
many answers fall in each case and how many of them each model got right.
"""
from __future__ import annotations

import argparse
from collections import Counter

from spinlora.data import READ_AGAIN, asked_object
from spinlora.paired import read_samples


def label_case(question: str, output: str) -> str:
    want = asked_object(question.split(READ_AGAIN)[0])
    first = output.split("\n")[0]
    got = first.split(":")[0].strip().lower() if ":" in first else None
    if not want:
        return "none expected"
    return "matches" if got == want else ("missing" if got is None else "another")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("labelled")
    ap.add_argument("reference")
    a = ap.parse_args()
    lab, ref = read_samples(a.labelled), read_samples(a.reference)
    rows, right, ref_right = Counter(), Counter(), Counter()
    for key, r in lab.items():
        if key not in ref:
            continue
        k = (label_case(r["question"], r["output"]),
             "with an irrelevant number" if r.get("irrelevant_numbers") else "without")
        rows[k] += 1
        right[k] += bool(r["correct"])
        ref_right[k] += bool(ref[key]["correct"])
    print("| problems | the label | answers | right (labelled) | right (reference) |")
    print("|---|---|---|---|---|")
    for k in sorted(rows, key=lambda k: (k[1], k[0])):
        print(f"| {k[1]} | {k[0]} | {rows[k]} | {right[k]} | {ref_right[k]} |")


if __name__ == "__main__":
    main()
