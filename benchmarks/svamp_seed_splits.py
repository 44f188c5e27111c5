"""Each method's paired difference from its own replicate's SFT on one part of SVAMP, as mean ±
seed SE over the seeds of ``svamp_study.py --seeds`` (from the result files it keeps beside the
summary: ``points/`` for the study's own seed, ``points/seedS/`` for the others).

    python benchmarks/svamp_seed_splits.py benchmarks/results/svamp_all_linear \\
        [--subset irrelevant|relevant|out_of_order|in_order ...]

Without ``--subset`` it prints all four parts (``paired.py --subset`` says what each holds).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from paired import SUBSETS, samples, subset, subset_keys
from svamp_study import _mean, _sd

from spinlora.paired import paired

# model -> (the study's point folder, a replicate's point folder, samples label)
MODELS = {"spin_iter_1": ("main", "spin", "lora_spin_iter_1"),
          "spin_iter_2": ("main", "spin", "lora_spin_iter_2"),
          "irpo_iter_1": ("irpo", "irpo", "lora_spin_iter_1"),
          "irpo_iter_2": ("irpo", "irpo", "lora_spin_iter_2"),
          "grpo": ("grpo", "grpo", "lora_rl")}


def split_deltas(results: Path, seeds: list[int], keep: set) -> dict[str, list[float]]:
    """Per model, its paired difference from its own SFT on the problems in ``keep``, one value
    per seed (the first seed is the study's own: folders ``points/main`` etc.)."""
    out = {model: [] for model in MODELS}
    for i, seed in enumerate(seeds):
        base = results / "points" / ("" if i == 0 else f"seed{seed}")
        sft_dir = "main" if i == 0 else "sft"
        sft = subset(samples(base / sft_dir / "eval" / "samples_lora_sft_svamp.jsonl.gz"), keep)
        for model, (study_point, seed_point, label) in MODELS.items():
            ev = base / (study_point if i == 0 else seed_point) / "eval"
            it = subset(samples(ev / f"samples_{label}_svamp.jsonl.gz"), keep)
            out[model].append(paired(it, sft)[0])
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="the folder holding summary_seeds.json and points/")
    ap.add_argument("--subset", nargs="*", choices=tuple(SUBSETS), default=list(SUBSETS))
    ap.add_argument("--data-root", default="../shared/data")
    args = ap.parse_args(argv)
    results = Path(args.results)
    summary = results / "summary_seeds.json"
    if not summary.is_file():
        raise SystemExit(f"{summary}: missing (svamp_study.py --seeds writes it)")
    seeds = json.loads(summary.read_text())[0]["seeds"]
    out = {}
    for which in args.subset:
        keep = subset_keys(which, args.data_root)
        out[which] = split_deltas(results, seeds, keep)
        print(f"{which} ({len(keep)} problems), Δ vs own SFT over seeds {seeds}:")
        for model, d in out[which].items():
            se = _sd(d) / len(d) ** 0.5
            print(f"  {model}: {100 * _mean(d):+.1f} ± {100 * se:.1f} (seed SE); "
                  + " / ".join(f"{100 * x:+.1f}" for x in d))
    return out


if __name__ == "__main__":
    main()
