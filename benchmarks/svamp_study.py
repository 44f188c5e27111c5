"""SVAMP study on the embedded model, 2 CPU cores: base, LoRA-SFT, then from the same SFT adapter
SPIN (gold ≻ own answer), Iterative RPO (own right ≻ own wrong + NLL) and GRPO, every model
scored on the 1000 SVAMP problems (``configs/svamp.yaml``; ``svamp.py`` says how).

    python benchmarks/svamp_study.py                       # the whole study, ~1-1.5 h on 2 cores
    python benchmarks/svamp_study.py --set eval.limit=50   # a small smoke run (another --out)
    python benchmarks/svamp_study.py --seeds 1,2           # + two replicates, ~45 min each

Each point is an ordinary ``spinlora`` run with its own folder and report under ``--out``:
  ``main``  ``spinlora run configs/svamp.yaml``: SFT, SPIN with its shipped defaults, evaluation
            of base / SFT / each SPIN iteration;
  ``irpo``  ``spinlora spin --adapter main/sft/adapter spin.chosen=own_correct
            spin.loss=sigmoid_nll …``: its iterations evaluated;
  ``grpo``  ``spinlora rl --adapter main/sft/adapter …``: as many sampled answers as IRPO drew;
  ``calc``  ``spinlora eval --adapter main/sft/adapter generation.calculator=true``: the SFT
            model with the calculator in its decoding loop (row ``sft_calculator``).
Points run one after the other (two heavy processes on 2 cores slow each other many times over);
a point whose run finished is skipped on the next call. The summary,
``benchmarks/results/svamp/summary.json`` (``--summary``), is a list of rows ``{model, method,
iteration, accuracy, stated_accuracy, stderr, n, delta_vs_sft, delta_vs_sft_se,
generated_tokens, seconds}``: ``accuracy`` is the value of the equation the model writes (the
SVAMP paper's score), ``delta_vs_sft`` the paired difference from SFT on the same problems with
its paired standard error, ``generated_tokens`` the tokens the method sampled to train (the
opponent's or the policy's), ``seconds`` that row's own training and evaluation time.

One run's paired SE counts the sampling of the 1000 problems, not the training run's own noise,
and on this model a reseeded SFT moves by as much as the methods do. ``--seeds 1,2`` adds
replicates under ``--out``/seedS (points ``SEED_POINTS``, each with ``seed=S``) and writes
``summary_seeds.json`` / ``.md`` beside the summary: per model, the accuracy and the difference
from its own replicate's SFT as mean ± sd over the study's seed and these, with the seed-level
SE sd / sqrt(seeds).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from spinlora.paired import paired, read_samples

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "configs/svamp.yaml"
# IRPO and GRPO settings were raised before they ran, once SPIN's defaults (lr 2e-5) were seen
# to leave the SFT model where it was (margin 0.0008 after an iteration); docs/svamp.md says
# what else was tried
POINTS = {
    "main": ["run", RECIPE],
    "irpo": ["spin", RECIPE, "--adapter", "{out}/main/sft/adapter", "spin.chosen=own_correct",
             "spin.loss=sigmoid_nll", "spin.opponent.samples=4", "spin.opponent.temperature=0.8",
             "spin.lr=2.0e-4", "spin.epochs=2", "stages=[spin,eval]", "eval.models=[spin]"],
    # 4 rounds x 64 prompts x 8 samples = 2048 answers, as IRPO's 2 x 256 prompts x 4 samples
    "grpo": ["rl", RECIPE, "--adapter", "{out}/main/sft/adapter", "rl.rounds=4", "rl.prompts=64",
             "rl.samples=8", "rl.temperature=0.8", "rl.lr=1.0e-4", "rl.beta=0.04",
             "rl.heldout=64", "stages=[rl,eval]", "eval.models=[rl]"],
    # the optional calculator (generation.calculator): the SFT adapter evaluated with it, with
    # the study's own attention and decoding loop, so that the calculator is the only difference
    "calc": ["eval", RECIPE, "--adapter", "{out}/main/sft/adapter", "generation.calculator=true",
             "eval.models=[sft]"],
}
# a replicate with another seed (--seeds): its own SFT (trained and scored alone), then SPIN at
# its defaults, IRPO and GRPO from that SFT as the study runs them; base and the calculator are
# left out (greedy answers of the base model do not depend on the seed)
SEED_POINTS = {
    "sft": ["run", RECIPE, "stages=[sft,eval]", "eval.models=[sft]"],
    "spin": ["spin", RECIPE, "--adapter", "{out}/sft/sft/adapter", "stages=[spin,eval]",
             "eval.models=[spin]"],
    **{k: [a.replace("{out}/main/", "{out}/sft/") for a in POINTS[k]] for k in ("irpo", "grpo")},
}


def run_point(name: str, out: Path, extra: list[str], points: dict = POINTS) -> float:
    """Run one point (unless its run finished earlier); its wall seconds (0 when skipped)."""
    folder = out / name
    where = folder.relative_to(out.parent)  # svamp_study/main, or seed3/irpo
    status = (json.loads((folder / "run.json").read_text()).get("status")
              if (folder / "run.json").is_file() else None)
    if status == "ok":
        print(f"[study] {where}: finished earlier, kept")
        return 0.0
    cmd = [a.format(out=out) for a in points[name]] + extra + ["--output-dir", str(folder)]
    cmd += ["--resume"] if status else []
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[study] {where}: spinlora {' '.join(cmd)}  (log {log})", flush=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        rc = subprocess.call([sys.executable, "-m", "spinlora", *cmd], stdout=f,
                             stderr=subprocess.STDOUT, cwd=ROOT,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if rc:
        raise SystemExit(f"[study] {name} failed (exit {rc}); see {log}. Run again to resume.")
    return time.perf_counter() - t0


def _load(p: Path):
    return json.loads(p.read_text()) if p.is_file() else None


def _samples(run: Path, label: str) -> dict[int, dict]:
    return read_samples(run / "eval" / f"samples_{label}_svamp.jsonl")


def _eval_seconds(run: Path, label: str) -> float:
    phases = _load(run / "eval" / "result.json")["accounting"]["phases"]
    return sum(v["seconds"] for k, v in phases.items() if k.endswith(f"[{label} svamp]"))


def summarize(out: Path) -> list[dict]:
    """The study's rows, from its run folders under ``out``."""
    main = out / "main"
    return _rows({"base": main, "sft": main, "spin": main, "irpo": out / "irpo",
                  "grpo": out / "grpo", "calc": out / "calc"})


def summarize_seed(folder: Path) -> list[dict]:
    """One replicate's rows (``--seeds``), from its run folders under ``folder``; no base row (its
    greedy answers do not depend on the seed) and no calculator row."""
    return _rows({"sft": folder / "sft", "spin": folder / "spin", "irpo": folder / "irpo",
                  "grpo": folder / "grpo"})


def _rows(runs: dict[str, Path]) -> list[dict]:
    """Rows for the run folders in ``runs`` (keys base, sft, spin, irpo, grpo, calc; a missing
    key or an unfinished run gives no row), each paired against the SFT row's answers."""
    sft_run = runs["sft"]
    ev = _load(sft_run / "eval" / "result.json")
    labels = {r["label"]: r for r in ev["rows"]}
    sft_label = next(k for k in labels if k.endswith("_sft"))
    prefix = sft_label.rsplit("_", 1)[0]
    sft = _samples(sft_run, sft_label)
    entries = [("base", "base", 0, runs["base"], "base", 0, None)] if "base" in runs else []
    entries.append((sft_label, "sft", 0, sft_run, sft_label, 0, sft_run / "sft" / "result.json"))
    for method in ("spin", "irpo"):
        folder = runs.get(method)
        iters = (folder / "spin").glob("iter_*") if folder else []
        done = [p for p in iters if p.name[5:].isdigit()]
        for it in sorted(done, key=lambda p: int(p.name[5:])):
            res = _load(it / "result.json")
            tokens = res["accounting"]["phases"].get("generate", {}).get("tokens", 0)
            entries.append((f"{method}_{it.name}", method, int(it.name[5:]), folder,
                            f"{prefix}_spin_{it.name}", tokens, it / "result.json"))
    grpo = runs.get("grpo")
    if grpo and (grpo / "rl" / "result.json").is_file():
        rl = _load(grpo / "rl" / "result.json")
        entries.append(("grpo", "grpo", rl.get("rounds_done", len(rl.get("rounds", []))), grpo,
                        f"{prefix}_rl", rl.get("generated_tokens", 0), grpo / "rl" / "result.json"))
    if "calc" in runs:
        entries.append(("sft_calculator", "sft_calculator", 0, runs["calc"], sft_label, 0, None))
    rows = []
    for model, method, iteration, run, label, tokens, result in entries:
        if not (run / "eval" / f"samples_{label}_svamp.jsonl").is_file():
            continue
        task = {r["label"]: r for r in _load(run / "eval" / "result.json")["rows"]}[label][
            "tasks"]["svamp"]
        s = _samples(run, label)
        delta, se, _ = paired(s, sft)
        train_s = _load(result)["accounting"]["seconds_total"] if result else 0.0
        rows.append({"model": model, "method": method, "iteration": iteration,
                     "accuracy": task["acc"], "stated_accuracy": task["stated_acc"],
                     "stderr": task["acc_stderr"], "n": task["n"],
                     "delta_vs_sft": delta, "delta_vs_sft_se": se,
                     "generated_tokens": tokens,
                     "seconds": round(train_s + _eval_seconds(run, label), 1),
                     "with_equation": task.get("with_equation"),
                     "max_new_tokens": task.get("max_new_tokens")})
    return rows


def across_seeds(per_seed: dict[int, list[dict]]) -> list[dict]:
    """One row per model that every replicate has: its accuracy and its paired difference from
    its own replicate's SFT, as mean and sample standard deviation over the seeds, and
    ``delta_seed_se`` = sd / sqrt(seeds), the standard error that counts the training runs' own
    noise (a single run's paired SE counts only the sampling of the problems), and
    ``delta_ci95``, mean ± t(seeds − 1) · seed SE: with 3 seeds t is 4.30, not 2. The SFT rows
    share one name whatever their label. Seeds keep the order of ``per_seed`` (the study's own
    first, which ``svamp_seed_splits.py`` relies on)."""
    def name(r):
        return "sft" if r["method"] == "sft" else r["model"]

    seeds = list(per_seed)  # in the order given: the study's own seed first
    by_seed = {s: {name(r): r for r in per_seed[s]} for s in seeds}
    first = [name(r) for r in per_seed[seeds[0]]]
    out = []
    for model in first:
        rows = [by_seed[s].get(model) for s in seeds]
        if any(r is None for r in rows):
            continue
        acc = [r["accuracy"] for r in rows]
        delta = [r["delta_vs_sft"] for r in rows]
        k = len(seeds)
        half = _t95(k - 1) * _sd(delta) / k ** 0.5 if k > 1 else float("nan")
        out.append({"model": model, "method": rows[0]["method"],
                    "iteration": rows[0]["iteration"], "seeds": seeds, "n": rows[0]["n"],
                    "accuracy_mean": _mean(acc), "accuracy_sd": _sd(acc),
                    "delta_vs_sft_mean": _mean(delta), "delta_vs_sft_sd": _sd(delta),
                    "delta_seed_se": _sd(delta) / k ** 0.5,
                    "delta_ci95": [_mean(delta) - half, _mean(delta) + half],
                    "per_seed": [{"seed": s, "accuracy": r["accuracy"],
                                  "delta_vs_sft": r["delta_vs_sft"],
                                  "delta_vs_sft_se": r["delta_vs_sft_se"]}
                                 for s, r in zip(seeds, rows)]})
    return out


def _t95(df: int) -> float:
    """Two-sided 95 % quantile of Student's t with ``df`` degrees of freedom (table to 10; past it
    1.96 + 2.4 / df, within 0.01 of the exact value)."""
    table = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]
    return table[df - 1] if df <= len(table) else 1.96 + 2.4 / df


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _sd(xs: list[float]) -> float:
    """Sample standard deviation (n − 1); 0 for a single value."""
    m = _mean(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0


def seeds_table(rows: list[dict]) -> str:
    seeds = rows[0]["seeds"] if rows else []
    lines = [f"| model | accuracy, mean ± sd | per seed ({', '.join(map(str, seeds))}) | "
             "Δ vs own SFT, mean ± seed SE | 95 % interval (t) | Δ per seed (± paired se) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        per = r["per_seed"]
        lines.append(
            f"| {r['model']} | {100 * r['accuracy_mean']:.1f} % ± {100 * r['accuracy_sd']:.1f} | "
            + " / ".join(f"{100 * p['accuracy']:.1f}" for p in per) + " | "
            + ("– | –" if r["method"] == "sft" else
               f"{100 * r['delta_vs_sft_mean']:+.1f} ± {100 * r['delta_seed_se']:.1f} | "
               + " to ".join(f"{100 * x:+.1f}" for x in r["delta_ci95"])) + " | "
            + ("–" if r["method"] == "sft" else " / ".join(
                f"{100 * p['delta_vs_sft']:+.1f} ± {100 * p['delta_vs_sft_se']:.1f}" for p in per))
            + " |")
    n = {r["n"] for r in rows}
    lines.append(f"\nn = {', '.join(map(str, sorted(n)))} SVAMP problems, greedy; seeds "
                 f"{', '.join(map(str, seeds))} (each seed: its own SFT, LoRA initialisation, "
                 "data order and sampling); seed SE = sd / sqrt(seeds); the interval is mean ± "
                 "t(seeds − 1) · seed SE.")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = ["| model | accuracy (equation value) ± se | stated number | Δ vs SFT ± paired se | "
             "sampled tokens | seconds |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {100 * r['accuracy']:.1f} % ± {100 * r['stderr']:.1f} | "
                     f"{100 * r['stated_accuracy']:.1f} % | {100 * r['delta_vs_sft']:+.1f} ± "
                     f"{100 * r['delta_vs_sft_se']:.1f} | {r['generated_tokens']:,} | "
                     f"{r['seconds']:.0f} |")
    n = {r["n"] for r in rows}
    lines.append(f"\nn = {', '.join(map(str, sorted(n)))} SVAMP problems; greedy evaluation.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/svamp_study")
    ap.add_argument("--summary", default="benchmarks/results/svamp/summary.json")
    ap.add_argument("--points", default="main,irpo,grpo,calc")
    ap.add_argument("--set", nargs="*", default=[], help="KEY=VALUE for every point")
    ap.add_argument("--seeds", default="", help="replicates besides the study's own seed, e.g. "
                    "1,2: each trains its own SFT and runs SPIN, IRPO and GRPO from it (~45 min "
                    "a seed on 2 cores); SUMMARY_seeds.json gets mean ± sd over all seeds")
    args = ap.parse_args()
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--seeds {args.seeds!r}: give whole numbers separated by commas, "
                         "e.g. --seeds 1,2") from None
    out = (ROOT / args.out).resolve()
    wall = {}
    for name in args.points.split(","):
        wall[name] = round(run_point(name, out, args.set), 1)
    study_seed = _study_seed(out / "main") if seeds else None
    if study_seed in seeds:
        raise SystemExit(f"--seeds: {study_seed} is the study's own seed (out/main); list only "
                         "the other replicates")
    for seed in seeds:
        for name in SEED_POINTS:
            wall[f"seed{seed}/{name}"] = round(run_point(
                name, out / f"seed{seed}", [*args.set, f"seed={seed}"], SEED_POINTS), 1)
    rows = summarize(out)
    dest = ROOT / args.summary
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(rows, indent=1) + "\n")
    (dest.parent / "points_wall_seconds.json").write_text(json.dumps(
        {**_merge_wall(dest.parent / "points_wall_seconds.json", wall),
         "overrides": args.set}, indent=1) + "\n")
    (dest.with_suffix(".md")).write_text(table(rows) + "\n")
    keep_results(out, dest.parent / "points")
    print(table(rows))
    print(f"[study] {dest}")
    if seeds:
        agg = across_seeds({study_seed: rows,
                            **{s: summarize_seed(out / f"seed{s}") for s in seeds}})
        multi = dest.with_name(dest.stem + "_seeds.json")
        multi.write_text(json.dumps(agg, indent=1) + "\n")
        multi.with_suffix(".md").write_text(seeds_table(agg) + "\n")
        for s in seeds:
            keep_results(out / f"seed{s}", dest.parent / "points" / f"seed{s}", SEED_POINTS)
        print(seeds_table(agg))
        print(f"[study] {multi}")


def _study_seed(main: Path) -> int:
    """The seed the study's own run used (its saved config)."""
    import yaml

    cfg = main / "config.yaml"
    if not cfg.is_file():
        raise SystemExit(f"--seeds needs the study's own run first: {cfg} is missing (run the "
                         "study with its main point)")
    return int(yaml.safe_load(cfg.read_text()).get("seed", 0))


def keep_results(out: Path, dest: Path, names=tuple(POINTS)) -> None:
    """Each point's result files (and its per-problem verdicts, compressed) beside the summary:
    the figures the summary cites stay checkable without the run folders. ``names``: the run
    folders under ``out`` to keep (the study's points; any run folder for a point outside it)."""
    import gzip
    import shutil

    for point in names:
        run = out / point
        for f in [run / "run.json", run / "config.yaml", *run.glob("*/result.json"),
                  *run.glob("spin/iter_*/result.json"), *run.glob("*/rounds.jsonl")]:
            if f.is_file() and ".partial" not in str(f):
                target = dest / point / f.relative_to(run)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)
        for f in run.glob("eval/samples_*_svamp.jsonl"):
            target = dest / point / "eval" / (f.name + ".gz")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(gzip.compress(f.read_bytes(), mtime=0))


def _merge_wall(path: Path, new: dict) -> dict:
    """Wall seconds per point, kept from earlier calls for points this call skipped."""
    old = (_load(path) or {}).get("points", {})
    return {"points": {k: new.get(k) or old.get(k, 0.0) for k in {**old, **new}}}


if __name__ == "__main__":
    main()
