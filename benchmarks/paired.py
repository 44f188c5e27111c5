"""Paired accuracy differences between models scored on the same problems.

    python benchmarks/paired.py runs/demo/eval/samples_lora_sft_svamp.jsonl \\
        runs/demo/eval/samples_lora_spin_iter_1_svamp.jsonl
    python benchmarks/paired.py benchmarks/results/svamp/demo/irpo_128/samples_lora_sft_svamp.jsonl.gz \\
        benchmarks/results/svamp/demo/irpo_128/samples_lora_spin_iter_1_svamp.jsonl.gz --json
    python benchmarks/paired.py SFT_SAMPLES OTHER_SAMPLES --subset irrelevant   # SVAMP's 447
    python benchmarks/paired.py SFT_SAMPLES OTHER_SAMPLES --subset out_of_order # SVAMP's 368
    python benchmarks/paired.py SFT_SAMPLES OTHER_SAMPLES --subset several_irrelevant  # 149
    python benchmarks/paired.py SFT_SAMPLES OTHER_SAMPLES --problems runs/s22/folds/b.json

The first file is the reference (SFT, say); every other file is compared with it over the
problems both answered (matched by ``index``, GSM8K's by question; ``.gz`` files are read
as they are; ``spinlora.paired``): accuracy,
the mean of (correct − reference correct) with its standard error, and how many problems were
gained and lost. This is the figure docs/svamp.md and the study's ``delta_vs_sft`` report.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from spinlora.paired import compare, line, read_samples


def samples(path: str) -> dict:
    """A samples file keyed by problem; a bad path or file ends the script with its reason."""
    try:
        return read_samples(path)
    except (OSError, ValueError) as e:
        raise SystemExit(str(e)) from None


# --subset: (the svamp test a problem passes or fails, the answer kept)
SUBSETS = {"irrelevant": ("irrelevant_numbers", True), "relevant": ("irrelevant_numbers", False),
           "out_of_order": ("out_of_order", True), "in_order": ("out_of_order", False),
           "several_irrelevant": ("several_irrelevant", True)}


def subset_keys(which: str | None, data_root: str) -> set | None:
    """``--subset``: the indices of the SVAMP problems with (irrelevant) or without (relevant)
    numbers their gold equation does not use (``svamp.irrelevant_numbers``), or whose gold
    equation uses the numbers out of (out_of_order) or in (in_order) the text's order
    (``svamp.out_of_order``); None for all."""
    if which is None:
        return None
    from spinlora import svamp

    try:
        test = svamp.load_test(data_root)
    except svamp.SvampError as e:
        raise SystemExit(str(e)) from None
    name, want = SUBSETS[which]
    test_of = getattr(svamp, name)
    return {i for i, t in enumerate(test) if test_of(t["prompt"], t["answer"]) == want}


def problem_keys(path: str | None, data_root: str) -> set | None:
    """``--problems``: the indices of the SVAMP problems listed in a JSON list of SVAMP.json rows
    (a half written by ``benchmarks/svamp_folds.py``), matched by ``ID``; None for all."""
    if path is None:
        return None
    from spinlora import svamp

    try:
        wanted = {str(r["ID"]) for r in json.loads(Path(path).read_text())}
        test = svamp.load_test(data_root)
    except (OSError, ValueError, TypeError, KeyError, svamp.SvampError) as e:
        raise SystemExit(f"--problems {path}: {e}; it must be a JSON list of SVAMP.json rows "
                         "(benchmarks/svamp_folds.py writes them)") from None
    keep = {i for i, t in enumerate(test) if str(t["id"]) in wanted}
    if len(keep) != len(wanted):
        raise SystemExit(f"--problems {path}: {len(wanted) - len(keep)} of its IDs are not "
                         f"in {data_root}/svamp/SVAMP.json")
    return keep


def subset(rows: dict, keep: set | None) -> dict:
    return rows if keep is None else {k: r for k, r in rows.items() if k in keep}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reference", help="samples file of the model to compare against")
    ap.add_argument("others", nargs="+", help="samples files of the models to compare")
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of lines")
    ap.add_argument("--subset", choices=tuple(SUBSETS),
                    help="SVAMP: only the problems that state more numbers than their gold "
                         "equation uses (irrelevant), or only the others (relevant); only those "
                         "whose gold equation takes the numbers out of the text's order "
                         "(out_of_order), or only the others (in_order); only those with two "
                         "or more irrelevant numbers (several_irrelevant)")
    ap.add_argument("--problems", metavar="JSON",
                    help="SVAMP: only the problems listed in this JSON list of SVAMP.json rows "
                         "(a half from benchmarks/svamp_folds.py); with --subset, both")
    ap.add_argument("--data-root", default="../shared/data",
                    help="the folder holding svamp/SVAMP.json (for --subset, --problems)")
    args = ap.parse_args(argv)
    keep = subset_keys(args.subset, args.data_root)  # SVAMP.json read once
    listed = problem_keys(args.problems, args.data_root)
    if listed is not None:
        keep = listed if keep is None else keep & listed
    ref = subset(samples(args.reference), keep)
    rows = []
    for path in args.others:
        try:
            row = {"file": path, **compare(ref, subset(samples(path), keep))}
        except ValueError as e:
            raise SystemExit(f"{path}: {e}") from None
        rows.append(row)
        if not args.json:
            print(f"{path}: {row['accuracy']:.1%} against {row['reference_accuracy']:.1%}, "
                  + line(row))
    if args.json:
        print(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
