"""SPIN quality study: one SFT adapter, then a grid of SPIN settings, each evaluated on GSM8K.
(``--stage rl`` / ``dpo``: the points run RL or DPO from the same SFT adapter instead.)

    python benchmarks/spin_quality.py --config configs/qwen05b_gsm8k.yaml --model qwen.gguf \
        --out runs/spin_quality --parallel 4 \
        --grid "spin.loss=[sigmoid,sigmoid_nll,dpop,ipo]" "spin.lr=[5.0e-6,2.0e-5]" \
        --grid-keys "spin.correct_pairs=[keep,drop]" "spin.iterations=[3]"

Steps (each an ordinary ``spinlora`` run, so every point has its own run folder and report):
  1. SFT once (``OUT/sft``), unless ``--sft-adapter`` names one;
  2. the reference point ``base_sft``: base and SFT evaluated with the recipe's eval settings;
  3. every grid point: SPIN from the SFT adapter (``stages=[spin,eval]``, ``eval.models=[spin]``),
     so each iteration 1..T is evaluated and the grid's "iterations" axis comes for free.
Points run ``--parallel`` at a time (on one GPU, generation is launch-bound, so several processes
share it well); a point that runs out of GPU memory beside the others is run again alone at the
end. Each finished point writes ``OUT/results/<point>.json`` (status, seconds, GSM8K
accuracy ± stderr with n, strict and flexible, held-out accuracy per iteration, step-0 check, pair
counts); a point with a result file is skipped on the next call (resumable). ``OUT/summary.md``
is the table: every model's accuracy and its difference from SFT.

``--grid KEY=[v1,v2]`` axes multiply; ``--point "KEY=V KEY=V"`` adds one point as it is; ``--set
KEY=V`` applies to every run (SFT and points), e.g. a small scale for a CPU smoke run.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from spinlora.evaluate.choice import stderr


def grid_points(grid: list[str], explicit: list[str]) -> list[list[str]]:
    axes = []
    for g in grid:
        key, raw = g.split("=", 1)
        values = yaml.safe_load(raw)
        axes.append([f"{key}={json.dumps(v) if not isinstance(v, str) else v}"
                     for v in (values if isinstance(values, list) else [values])])
    points = [list(combo) for combo in itertools.product(*axes)] if axes else []
    return points + [p.split() for p in explicit]


def point_name(overrides: list[str]) -> str:
    """A file-safe name that keeps every value exactly (no rounding: 1e-4 and 1.5e-4 differ)."""
    parts = []
    for o in overrides:
        key, value = o.split("=", 1)
        parts.append(f"{key.split('.')[-1]}-{value}")
    name = "_".join(parts) or "default"
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in name)


def spinlora(args: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "spinlora", *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=env)


def _acc_fields(row: dict) -> dict:
    n = row.get("n") or 0

    def se(p):
        return None if p is None or n < 2 else stderr(p, n)

    return {"label": row["label"], "n": n, "accuracy": row.get("accuracy"),
            "accuracy_stderr": row.get("accuracy_stderr"),
            "strict": row.get("accuracy_strict"), "strict_stderr": se(row.get("accuracy_strict")),
            "flexible": row.get("accuracy_flexible"),
            "flexible_stderr": se(row.get("accuracy_flexible")),
            "gold_logp_per_token": row.get("gold_logp_per_token"),
            "own_finished_rate": row.get("own_finished_rate"), "error": row.get("error")}


def collect(run: Path, overrides: list[str], rc: int, seconds: float) -> dict:
    """The result file of one point, read from its run folder."""
    def load(p: Path):
        return json.loads(p.read_text()) if p.exists() else None

    status = (load(run / "run.json") or {}).get("status", "missing")
    ev = load(run / "eval" / "result.json") or load(run / "eval.partial" / "result.json") or {}
    spin = load(run / "spin" / "result.json") or {}
    iters = []
    for it in sorted((run / "spin").glob("iter_*/result.json"),
                     key=lambda p: int(p.parent.name.split("_")[1])):
        r = json.loads(it.read_text())
        iters.append({k: r.get(k) for k in ("iteration", "loss", "beta", "lr", "pairs",
                                             "step0_pref_loss", "step0_expected", "step0_ok",
                                             "loss_last", "margin_last", "disc_accuracy_last")}
                     | {"generation": r.get("generation"),
                        "heldout_accuracy": (r.get("heldout") or {}).get("accuracy"),
                        "heldout_gold_logp": (r.get("heldout") or {}).get("gold_logp_per_token"),
                        "seconds": r.get("accounting", {}).get("seconds_total"),
                        "generated_tokens": r.get("accounting", {}).get("phases", {}).get(
                            "generate", {}).get("tokens"),
                        "phase_seconds": {k: v["seconds"] for k, v in
                                          r.get("accounting", {}).get("phases", {}).items()},
                        "peak_MB_over_baseline": round(r.get("accounting", {}).get(
                            "peak_over_baseline_bytes", 0) / 2**20)})
    rl = load(run / "rl" / "result.json") or {}
    return {"overrides": overrides, "status": status if rc == 0 else f"{status} (exit {rc})",
            **({"rl_rounds": rl.get("rounds"), "rl_generated_tokens": rl.get("generated_tokens"),
                "rl_checks": {k: rl.get(k) for k in (
                "step0_ratio_ok", "first_round_kl0_ok")},
                "rl_heldout": [(rl.get(k) or {}).get("accuracy") for k in (
                    "heldout_before", "heldout_after")]} if rl else {}),
            "seconds": round(seconds, 1), "eval_n": ev.get("n"),
            "models": [_acc_fields(r) for r in ev.get("rows", [])],
            "heldout_start_accuracy": ((spin.get("history") or [{}])[0].get("heldout") or {}).get("accuracy"),
            "best_iteration": spin.get("best_iteration"), "iterations": iters}


def _pct(x, se=None):
    if x is None:
        return "-"
    return f"{100 * x:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")


def _skipped(counts: dict) -> int:
    """Prompts without a pair: already correct (gold pairs) or without a right and a wrong
    sample (spin.chosen=own_correct)."""
    return sum(v for k, v in (counts or {}).items()
               if k in ("dropped_correct", "dropped_unfinished", "no_right_sample", "no_wrong_sample"))


def _generated(label: str, it: dict | None, so_far: dict, res: dict) -> str:
    if it is not None:
        return f"{so_far.get(it['iteration'], 0):,}"
    if label.endswith("_rl") and res.get("rl_generated_tokens") is not None:
        return f"{res['rl_generated_tokens']:,}"
    return "-"


def summary(out: Path) -> str:
    results = {p.stem: json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))}
    ref = results.get("base_sft", {})
    sft = next((m for m in ref.get("models", []) if m["label"].endswith("_sft")), None)
    sft_held = next((r["heldout_start_accuracy"] for r in results.values()
                     if r.get("heldout_start_accuracy") is not None), None)
    lines = ["# SPIN quality study", "",
             "GSM8K test, zero-shot in the chat template, greedy; accuracy in % ± stderr "
             "(headline = strict `#### N`, else the last number); Δ = headline − SFT headline; "
             "generated = training-time tokens the model generated up to this model (SPIN: its "
             "iterations so far; RL: all rounds), for comparisons at equal generation.", "",
             "| point | model | n | headline | strict | flexible | Δ vs SFT | held-out acc "
             "| step-0 ok | pairs (skipped) | generated |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        iters = {i["iteration"]: i for i in res.get("iterations", [])}
        so_far, total = {}, 0
        for k in sorted(iters):
            total += iters[k].get("generated_tokens") or 0
            so_far[k] = total
        for m in res.get("models", []):
            it = iters.get(int(m["label"].rsplit("_", 1)[1])) if "_iter_" in m["label"] else None
            delta = ("-" if sft is None or m["accuracy"] is None or sft["accuracy"] is None
                     else f"{100 * (m['accuracy'] - sft['accuracy']):+.1f}")
            held = sft_held if m["label"].endswith("_sft") else None
            lines.append(
                f"| {name} | {m['label']} | {m['n']} | {_pct(m['accuracy'], m['accuracy_stderr'])} "
                f"| {_pct(m['strict'], m['strict_stderr'])} | {_pct(m['flexible'], m['flexible_stderr'])} "
                f"| {delta} | {_pct(it['heldout_accuracy'] if it else held)} "
                f"| {it['step0_ok'] if it else '-'} "
                f"| {(str(it['pairs']) + ' (' + str(_skipped(it['generation'])) + ')') if it else '-'} "
                f"| {_generated(m['label'], it, so_far, res)} |")
        if not res.get("models"):
            lines.append(f"| {name} | ({res['status']}) | | | | | | | | | |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/qwen05b_gsm8k.yaml")
    ap.add_argument("--model", help="model name, directory or .gguf (overrides the recipe's)")
    ap.add_argument("--out", default="runs/spin_quality")
    ap.add_argument("--sft-adapter", help="start every point from this adapter (skip SFT)")
    ap.add_argument("--grid", nargs="*", default=[], help="KEY=[v1,v2,...] axes (product)")
    ap.add_argument("--point", action="append", default=[], help='"KEY=V KEY=V": one more point')
    ap.add_argument("--set", action="append", default=[], help="KEY=V for every run")
    ap.add_argument("--parallel", type=int, default=1, help="points running at once")
    ap.add_argument("--no-reference", action="store_true", help="skip the base/SFT evaluation")
    ap.add_argument("--stage", choices=["spin", "rl", "dpo"], default="spin",
                    help="what each point runs from the SFT adapter (its keys: spin.*, rl.*, dpo.*)")
    args = ap.parse_args()

    out = Path(args.out)
    (out / "results").mkdir(parents=True, exist_ok=True)
    common = [args.config, *args.set] + (["--model", args.model] if args.model else [])
    t0 = time.perf_counter()
    sft = Path(args.sft_adapter) if args.sft_adapter else out / "runs" / "sft" / "sft" / "adapter"
    if not sft.exists():
        print(f"[study] SFT -> {sft}", flush=True)
        proc = spinlora(["sft", *common, "--output-dir", str(out / "runs" / "sft"), "--overwrite"],
                        out / "logs" / "sft.log")
        if proc.wait() != 0 or not sft.exists():
            sys.exit(f"[study] SFT failed; see {out / 'logs' / 'sft.log'}")
        print(f"[study] SFT done at {time.perf_counter() - t0:.0f}s", flush=True)

    jobs = [] if args.no_reference else [("base_sft", ["eval", *common, "--adapter", str(sft),
                                                       "eval.models=[base,sft]"], [])]
    for ov in grid_points(args.grid, args.point):
        jobs.append((point_name(ov), ["run", *common, "--adapter", str(sft),
                                      f"stages=[{args.stage},eval]",
                                      f"eval.models=[{args.stage}]", *ov], ov))
    todo = [j for j in jobs if not (out / "results" / f"{j[0]}.json").exists()]
    print(f"[study] {len(jobs)} points, {len(jobs) - len(todo)} done earlier", flush=True)
    running: dict[str, tuple] = {}
    alone: list[tuple] = []  # points that ran out of GPU memory beside others: once more, alone
    while todo or running or alone:
        if not todo and not running and alone:
            todo, alone, args.parallel = alone, [], 1
            print(f"[study] retrying {len(todo)} point(s) that ran out of memory, one at a time",
                  flush=True)
        while todo and len(running) < args.parallel:
            name, cmd, ov = todo.pop(0)
            run_dir = out / "runs" / name
            proc = spinlora([*cmd, "--output-dir", str(run_dir), "--overwrite"],
                            out / "logs" / f"{name}.log")
            running[name] = (proc, run_dir, ov, time.perf_counter())
            print(f"[study] started {name}", flush=True)
        time.sleep(2)
        for name, (proc, run_dir, ov, start) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            res = collect(run_dir, ov, proc.returncode, time.perf_counter() - start)
            if res["status"].startswith("oom") and args.parallel > 1:
                alone.append(next(j for j in jobs if j[0] == name))
                print(f"[study] {name}: out of memory beside other runs; will retry alone",
                      flush=True)
                continue
            (out / "results" / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
            accs = ", ".join(f"{m['label']} {_pct(m['accuracy'], m['accuracy_stderr'])}"
                             for m in res["models"])
            print(f"[study] {name}: {res['status']} in {res['seconds']:.0f}s; {accs}", flush=True)
            summary(out)
    print(summary(out))
    print(f"[study] total {time.perf_counter() - t0:.0f}s; {out / 'summary.md'}")


if __name__ == "__main__":
    main()
