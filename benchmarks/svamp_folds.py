"""SVAMP's 1000 problems in two seeded halves, for measurements that train on one half of the test
set and score the other: how far a method could go if its training problems were SVAMP's own.

    python benchmarks/svamp_folds.py --out runs/s22/folds          # writes a.json and b.json
    spinlora rl configs/svamp.yaml --adapter SFT data.train=runs/s22/folds/a.json ... \\
        "stages=[rl,eval]" "eval.models=[rl]" --output-dir runs/s22/grpo_a
    python benchmarks/paired.py SFT_SAMPLES runs/s22/grpo_a/eval/samples_lora_rl_svamp.jsonl \\
        --problems runs/s22/folds/b.json                          # the half it never saw
    python benchmarks/svamp_folds.py --drawn runs/s22/grpo_a --fold runs/s22/folds/a.json \\
        --out runs/s22/folds
        # a_drawn.json / a_not_drawn.json: the problems of half a its RL rounds trained on, and not
    python benchmarks/svamp_folds.py --out runs/s22/folds --cross SFT_SAMPLES \\
        runs/s22/grpo_a/eval/samples_lora_rl_svamp.jsonl runs/s22/grpo_b/eval/samples_lora_rl_svamp.jsonl
        # both runs together: each problem scored by the run that never saw it (unseen, n = 1000),
        # and by the one that trained on its half (trained), paired against SFT_SAMPLES

Each half is a JSON list of SVAMP.json's own rows (``ID``, ``Body``, ``Question``, ``Equation``,
``Answer``, ``Type``), so ``data.train`` reads it as SVAMP (gold = the equation over the real
numbers, ``#### value``) and ``paired.py --problems`` restricts a comparison to it. These are
not a method: training on SVAMP breaks the SVAMP paper's protocol (train on MAWPS + ASDiv-A).
They bound what the protocol's methods could reach, and say which half a row was trained on.
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

OTHER = {"a": "b", "b": "a"}  # each half's other half


def halves(rows: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded random half of ``rows`` and the rest, each in SVAMP.json's order."""
    picked = set(random.Random(seed).sample(range(len(rows)), len(rows) // 2))
    return ([r for i, r in enumerate(rows) if i in picked],
            [r for i, r in enumerate(rows) if i not in picked])


def drawn_rows(run: Path, n: int) -> tuple[set[int], str]:
    """The rows of the SFT set (of ``n`` rows) that a run's RL rounds drew as prompts: recorded
    per round in ``rl/rounds.jsonl`` (``sft_rows``), or, for runs from before it was recorded,
    the stage's own draw replayed: ``subset(rows, rl.prompts, data.seed + t)`` for round t
    (exact when every row of the set has a checkable gold answer, as SVAMP's all do)."""
    from spinlora.data import subset

    rounds = [json.loads(x) for x in (run / "rl" / "rounds.jsonl").read_text().splitlines()]
    if all("sft_rows" in r for r in rounds):
        return {i for r in rounds for i in r["sft_rows"]}, "recorded"
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    k, seed = cfg["rl"]["prompts"] or None, cfg["data"]["seed"]  # 0 / null: every row, as the stage
    return {i for t in range(len(rounds)) for i in subset(list(range(n)), k, seed + t)}, "replayed"


def _words(text: str) -> set[str]:
    return set(re.sub(r"[.,?!]", " ", text.lower()).split())


def siblings(halves: dict[str, list[dict]], threshold: float = 0.6) -> set[str]:
    """IDs of the problems whose Body shares more than ``threshold`` of its words (Jaccard of
    the word sets) with some Body in the other half: SVAMP makes several problems from one
    ASDiv-A problem, so a problem "never seen" may be a sibling of one trained on."""
    words = {h: [_words(r["Body"]) for r in rows] for h, rows in halves.items()}
    out = set()
    for h, rows in halves.items():
        for r, w in zip(rows, words[h]):
            if any(len(w & x) / max(len(w | x), 1) > threshold for x in words[OTHER[h]]):
                out.add(str(r["ID"]))
    return out


def cross(folder: Path, reference: str, on_a: str, on_b: str, data_root: str) -> dict:
    """Two runs, one trained on half a and one on half b, as two models over all 1000 problems:
    ``unseen`` takes each problem's answer from the run that did not train on its half,
    ``trained`` from the one that did; each paired against ``reference``. ``unseen`` is also
    split into the problems with a sibling in the other half (``siblings``) and those without."""
    from spinlora.paired import compare, read_samples
    from spinlora.svamp import load_test

    index = {str(t["id"]): i for i, t in enumerate(load_test(data_root))}
    rows = {name: json.loads((folder / f"{name}.json").read_text()) for name in "ab"}
    half = {index[str(r["ID"])]: name for name in "ab" for r in rows[name]}
    related = {index[i] for i in siblings(rows)}
    runs = {"a": read_samples(on_a), "b": read_samples(on_b)}
    ref = read_samples(reference)
    out = {}
    for kind, pick in (("unseen", lambda h: runs[OTHER[h]]), ("trained", lambda h: runs[h])):
        model = {k: pick(h)[k] for k, h in half.items() if k in pick(h)}
        out[kind] = compare(ref, model)
        if kind == "unseen":
            for name, keep in (("unseen, with a sibling", True), ("unseen, without", False)):
                part = {k: v for k, v in model.items() if (k in related) == keep}
                out[name] = compare(ref, part)
    return out


def main(argv: list[str] | None = None) -> tuple[Path, Path] | dict:
    """Writes the halves (or, with --drawn, a half's drawn / not-drawn parts) and returns their
    paths; with --cross prints and returns the comparisons."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for a.json and b.json (or the --drawn halves)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default="../shared/data",
                    help="the folder holding svamp/SVAMP.json")
    ap.add_argument("--drawn", metavar="RUN",
                    help="an RL run trained on --fold: write the fold's drawn / not-drawn problems")
    ap.add_argument("--fold", help="the half (a.json or b.json) the --drawn run trained on")
    ap.add_argument("--cross", nargs=3, metavar=("REFERENCE", "RUN_A", "RUN_B"),
                    help="samples files: the reference, a run trained on --out's a.json, one "
                         "trained on b.json; prints both runs on the halves they never saw and "
                         "on the halves they trained on, paired against the reference")
    args = ap.parse_args(argv)
    if args.cross:
        from spinlora.paired import line

        try:
            res = cross(Path(args.out), *args.cross, args.data_root)
        except (OSError, ValueError) as e:  # a missing or malformed samples file / half
            raise SystemExit(f"--cross: {e}") from None
        for kind, row in res.items():
            print(f"{kind}: {row['accuracy']:.1%} against {row['reference_accuracy']:.1%}, "
                  + line(row))
        return res
    if args.drawn:
        if not args.fold:
            raise SystemExit("--drawn needs --fold, the half that run trained on")
        fold = Path(args.fold)
        try:
            rows = json.loads(fold.read_text())
            drawn, how = drawn_rows(Path(args.drawn), len(rows))
        except (OSError, ValueError, KeyError) as e:
            raise SystemExit(f"--drawn {args.drawn} --fold {fold}: {e} (an RL run folder with "
                             "rl/rounds.jsonl and config.yaml, and the half it trained on)") from None
        paths = []
        for name, keep in (("drawn", True), ("not_drawn", False)):
            part = [r for i, r in enumerate(rows) if (i in drawn) == keep]
            path = Path(args.out) / f"{fold.stem}_{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(part, indent=0))
            paths.append(path)
            print(f"{path}: {len(part)} of {fold}'s {len(rows)} problems ({how} draw)")
        return paths[0], paths[1]
    src = Path(args.data_root) / "svamp" / "SVAMP.json"
    if not src.is_file():
        raise SystemExit(f"{src} not found; pass --data-root (the folder holding svamp/)")
    rows = json.loads(src.read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in zip("ab", halves(rows, args.seed)):
        path = out / f"{name}.json"
        path.write_text(json.dumps(part, indent=0))
        paths.append(path)
        print(f"{path}: {len(part)} of {len(rows)} SVAMP problems (seed {args.seed})")
    return paths[0], paths[1]


if __name__ == "__main__":
    main()
