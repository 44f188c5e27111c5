"""Learning-rate sweeps: a grid of runs (methods × learning rates × ranks × batch sizes × seeds).

    spinlora sweep configs/sweep_lr.yaml                 # resumable: finished points are skipped
    spinlora sweep configs/sweep_lr.yaml sweep.methods=[lora,dora] sweep.seeds=[0]

Every point is an ordinary run (``SWEEP/runs/<point>/``) and leaves one result file
(``SWEEP/results/<point>.json``: the point, status ok | oom | diverged | error, the score, trainable
parameters, seconds, peak memory). An interrupted point has no result file and runs again on the
next call. ``SWEEP/summary.md`` / ``summary.csv`` give, per method (and rank, batch size), the score
mean ± std over seeds at each learning rate and the best learning rate;
``score_vs_lr.png`` plots them. The study this reproduces: "Learning Rate Matters: Vanilla LoRA
May Suffice for LLM Fine-tuning", arXiv 2602.04998.
"""
from __future__ import annotations

import copy
import csv
import itertools
import json
import math
import statistics
from pathlib import Path

from . import dist
from .config import RunConfig, save_config


def points(cfg: RunConfig) -> list[dict]:
    s = cfg.sweep
    return [dict(method=m, lr=lr, r=r, batch_size=b, seed=seed)
            for m, r, b, lr, seed in itertools.product(s.methods, s.ranks, s.batch_sizes, s.lrs,
                                                       s.seeds)]


def point_name(p: dict) -> str:
    # repr keeps every digit: 1e-4 and 1.5e-4 must not share a name (and a result file)
    return f"{p['method']}_r{p['r']}_bs{p['batch_size']}_lr{p['lr']!r}_s{p['seed']}"


def point_config(cfg: RunConfig, p: dict, root: Path) -> RunConfig:
    c = copy.deepcopy(cfg)
    c.adapter.method, c.adapter.r, c.seed = p["method"], p["r"], p["seed"]
    c.train.batch_size = p["batch_size"]
    c.train.micro_batch_size = math.gcd(min(c.train.micro_batch_size, p["batch_size"]),
                                        p["batch_size"])
    if cfg.sweep.stage == "sft":
        c.train.lr = p["lr"]
        c.stages, c.eval.models = ["sft", "eval"], ["sft"]
    else:
        c.spin.lr = p["lr"]
        c.stages, c.eval.models = ["sft", "spin", "eval"], ["spin"]
        c.spin.keep_best = None
    c.output_dir, c.overwrite = str(root / "runs" / point_name(p)), True
    return c.validate()


def score_of(run_dir: Path, metric: str) -> float | None:
    """``TASK.FIELD`` of the last evaluated model (the trained adapter) in a run's eval file."""
    f = run_dir / "eval" / "result.json"
    if not f.is_file():
        return None
    row = json.loads(f.read_text())["rows"][-1]
    task, field = metric.split(".", 1)
    src = row if task == "gsm8k" and field in row else row.get("tasks", {}).get(task, {})
    v = src.get(field)
    return float(v) if v is not None else None


def run_sweep(cfg: RunConfig) -> dict:
    from .pipeline import run

    root = Path(cfg.output_dir)
    if dist.is_main():  # several processes: they run every point together; one writes
        (root / "results").mkdir(parents=True, exist_ok=True)
        save_config(cfg, root / "sweep_config.yaml")
    grid = points(cfg)
    for i, p in enumerate(grid):
        name = point_name(p)
        dest = root / "results" / f"{name}.json"
        if dest.is_file():
            print(f"[sweep] {i + 1}/{len(grid)} {name}: done earlier, skipped")
            continue
        print(f"[sweep] {i + 1}/{len(grid)} {name}")
        c = point_config(cfg, p, root)
        try:
            run(c)
        except KeyboardInterrupt:
            raise  # no result file: this point runs again next time
        except Exception as e:  # recorded in run.json (oom / diverged / error); the sweep goes on
            print(f"[sweep] {name}: {type(e).__name__}: {e}")
        summary = json.loads((Path(c.output_dir) / "run.json").read_text())
        res = {"point": p, "name": name, "status": summary["status"],
               "error": summary.get("error"),
               "score": score_of(Path(c.output_dir), cfg.sweep.metric) if summary["status"] == "ok" else None,
               "metric": cfg.sweep.metric, "trainable": summary.get("parameters", {}).get("trainable"),
               "wall_seconds": summary.get("wall_seconds"), "run_dir": c.output_dir}
        sft = Path(c.output_dir) / "sft" / "result.json"
        if sft.is_file():
            acc = json.loads(sft.read_text()).get("accounting", {})
            res["peak_MB_over_baseline"] = round(acc.get("peak_over_baseline_bytes", 0) / 2**20)
        if dist.is_main():
            tmp = dest.with_suffix(".tmp")
            tmp.write_text(json.dumps(res, indent=2))
            tmp.replace(dest)
    if not dist.is_main():
        return {"points": len(grid), "best": {}, "summary": str(root / "summary.md")}
    return summarise(root, cfg.sweep.higher_is_better)


def summarise(root: Path, higher_is_better: bool = True) -> dict:
    """Per (method, r, batch size): mean ± std over seeds at each lr, and the best lr."""
    results = [json.loads(f.read_text()) for f in sorted((root / "results").glob("*.json"))]
    groups: dict[tuple, dict[float, list]] = {}
    for r in results:
        p = r["point"]
        groups.setdefault((p["method"], p["r"], p["batch_size"]), {}).setdefault(p["lr"], []).append(r)
    rows, best = [], {}
    for key, by_lr in groups.items():
        for lr, rs in sorted(by_lr.items()):
            scores = [r["score"] for r in rs if r["status"] == "ok" and r["score"] is not None]
            rows.append({"method": key[0], "r": key[1], "batch_size": key[2], "lr": lr,
                         "mean": statistics.fmean(scores) if scores else None,
                         "std": statistics.stdev(scores) if len(scores) > 1 else 0.0 if scores else None,
                         "seeds": len(scores), "statuses": ",".join(sorted({r["status"] for r in rs})),
                         "trainable": rs[0].get("trainable")})
        ok = [x for x in rows if x["method"] == key[0] and x["r"] == key[1]
              and x["batch_size"] == key[2] and x["mean"] is not None]
        if ok:
            b = (max if higher_is_better else min)(ok, key=lambda x: x["mean"])
            best[f"{key[0]} r{key[1]} bs{key[2]}"] = {"lr": b["lr"], "mean": b["mean"], "std": b["std"],
                                                       "seeds": b["seeds"]}
    metric = results[0]["metric"] if results else ""
    with open(root / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["method", "r", "batch_size", "lr", "mean", "std", "seeds",
                                          "statuses", "trainable"])
        w.writeheader()
        w.writerows(rows)
    lines = [f"# Sweep: {metric} ({'higher' if higher_is_better else 'lower'} is better)", "",
             "| method | r | batch | best lr | score (mean ± std) | seeds |", "|---|---|---|---|---|---|"]
    for k, b in best.items():
        m, r, bs = k.split()
        lines.append(f"| {m} | {r[1:]} | {bs[2:]} | {b['lr']:g} | {b['mean']:.4f} ± {b['std']:.4f} | {b['seeds']} |")
    lines += ["", "| method | r | batch | lr | mean | std | seeds | statuses |", "|---|---|---|---|---|---|---|---|"]
    for x in rows:
        mean = "–" if x["mean"] is None else f"{x['mean']:.4f}"
        std = "–" if x["std"] is None else f"{x['std']:.4f}"
        lines.append(f"| {x['method']} | {x['r']} | {x['batch_size']} | {x['lr']:g} | {mean} | "
                     f"{std} | {x['seeds']} | {x['statuses']} |")
    (root / "summary.md").write_text("\n".join(lines) + "\n")
    _plot(rows, metric, root / "score_vs_lr.png")
    return {"points": len(results), "best": best, "summary": str(root / "summary.md")}


def _plot(rows: list[dict], metric: str, dest: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key in dict.fromkeys((x["method"], x["r"], x["batch_size"]) for x in rows):
        pts = [x for x in rows if (x["method"], x["r"], x["batch_size"]) == key and x["mean"] is not None]
        if pts:
            ax.errorbar([x["lr"] for x in pts], [x["mean"] for x in pts],
                        yerr=[x["std"] for x in pts], marker="o", capsize=3,
                        label=f"{key[0]} r{key[1]} bs{key[2]}")
    ax.set(xscale="log", xlabel="learning rate", ylabel=metric, title="score vs learning rate (mean ± std over seeds)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dest, dpi=120)
    plt.close(fig)
