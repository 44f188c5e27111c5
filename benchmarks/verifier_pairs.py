"""Preference pairs for a verifier (``spinlora reward``) from the model's own sampled answers to
training problems: a right answer ≻ a wrong one to the same problem, right and wrong by the value
of the equation the answer writes (SVAMP's headline score; the stated number where it writes
none), against the problem's gold final answer. No data beyond the training set.

    spinlora eval configs/svamp.yaml --adapter SFT/adapter "eval.models=[sft]" "eval.tasks=[gsm8k]" \\
        data.eval=../shared/data/svamp/mawps-asdiv-a_train.csv eval.limit=1000 \\
        eval.self_consistency=8 eval.self_consistency_temperature=0.8 --output-dir runs/vpairs
    python benchmarks/verifier_pairs.py "runs/vpairs/eval/samples_lora_sft+maj@8.jsonl" \\
        --out runs/vpairs/pairs.jsonl
    spinlora reward configs/svamp.yaml reward.data=runs/vpairs/pairs.jsonl --output-dir runs/verifier

Per problem: up to ``--per-problem`` pairs of distinct right and wrong answer texts (finished
ones only: a cut answer would let length give it away); where no sample is right, the gold
answer ≻ a wrong sample (``--gold-when-none``), so the hardest problems give pairs too.

``--rows`` writes SFT rows instead (``question``, ``answer``): each problem's distinct right
answers, up to ``--per-problem`` (rejection-sampling fine-tuning, STaR's filter: the model's own
answers that the gold value confirms; no gold text is copied in).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit  # noqa: E402
from spinlora import svamp  # noqa: E402
from spinlora.paired import read_samples  # noqa: E402


def judged(record: dict) -> tuple[float, list[str], list[str]]:
    """A problem's gold value and its distinct finished sampled texts, right and wrong by the
    equation's value (``samples_MODEL+maj@k.jsonl`` record: its sampled texts), in sample order."""
    gold = float(record["gold"] if "gold" in record else record["gold_value"])
    right, wrong = [], []
    for s in record["samples"]:
        if not s["finished"]:
            continue
        side = right if svamp.score(s["text"], gold)["correct"] else wrong
        if s["text"] not in side:
            side.append(s["text"])
    return gold, right, wrong


def pairs_of(record: dict, per_problem: int, gold_when_none: bool) -> list[dict]:
    """One problem's pairs."""
    gold, right, wrong = judged(record)
    if not wrong:
        return []
    if not right:
        if not gold_when_none:
            return []
        value = int(gold) if gold == int(gold) else round(gold, 4)
        right = [record.get("gold_answer") or f"#### {value}"]  # the gold answer text
    n = min(per_problem, max(len(right), len(wrong)))
    return [{"prompt": record["question"], "chosen": right[i % len(right)],
             "rejected": wrong[i % len(wrong)]} for i in range(n)]


def right_rows(record: dict, per_problem: int) -> list[dict]:
    """One problem's distinct right, finished sampled answers as SFT rows (at most
    ``per_problem``)."""
    return [{"question": record["question"], "answer": t}
            for t in judged(record)[1][:per_problem]]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("samples", type=Path, help="samples_MODEL+maj@k[_svamp].jsonl[.gz] of training problems")
    ap.add_argument("--out", type=Path, required=True, help="pairs jsonl (prompt, chosen, rejected)")
    ap.add_argument("--per-problem", type=int, default=2)
    ap.add_argument("--no-gold-when-none", dest="gold_when_none", action="store_false")
    ap.add_argument("--rows", action="store_true",
                    help="write SFT rows (question, answer) of each problem's right answers")
    args = ap.parse_args(argv)
    records = list(read_samples(args.samples).values())
    if not records or "samples" not in records[0]:
        raise SystemExit(f"{args.samples}: no sampled texts (write it with eval.self_consistency)")
    if args.rows:
        rows = [row for r in records for row in right_rows(r, args.per_problem)]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("".join(json.dumps(x) + "\n" for x in rows))
        result = {"problems": len(records), "rows": len(rows),
                  "problems_with_a_right_answer": len({x["question"] for x in rows}),
                  "out": str(args.out)}
        emit(result, None)
        return result
    out, kinds = [], {"own_right": 0, "gold": 0, "no_wrong": 0}
    for r in records:
        ps = pairs_of(r, args.per_problem, args.gold_when_none)
        if not ps:
            kinds["no_wrong"] += 1
        for p in ps:
            kinds["own_right" if p["chosen"] in (s["text"] for s in r["samples"]) else "gold"] += 1
        out += ps
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(p) + "\n" for p in out))
    result = {"problems": len(records), "pairs": len(out), **kinds, "out": str(args.out)}
    emit(result, None)
    return result


if __name__ == "__main__":
    main()
