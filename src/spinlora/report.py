"""Tables and plots from a run folder's result files (nothing here recomputes a number).

    spinlora report runs/demo

Writes ``summary.md`` (GSM8K table with resources, SPIN diagnostics per iteration, per-phase
time and memory) and ``loss.png`` (training loss by epoch for SFT and each SPIN iteration).
"""
from __future__ import annotations

import json
from pathlib import Path


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _iterations(run: Path) -> list[Path]:
    return sorted((run / "spin").glob("iter_*[0-9]"), key=lambda p: int(p.name.split("_")[1]))


def _mb(n: int | None) -> str:
    return "–" if n is None else f"{n / 2**20:.0f}"


def plot_losses(run: Path, dest: Path) -> None:
    """Loss by epoch: SFT, then each SPIN iteration offset by the epochs before it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    sft = _jsonl(run / "sft" / "metrics.jsonl")
    if sft:
        axes[0].plot([r["epoch"] for r in sft], [r["loss"] for r in sft], marker=".")
    axes[0].set(title="SFT: NLL per answer token", xlabel="epoch", ylabel="loss")
    offset = 0.0
    for it in _iterations(run):
        recs = _jsonl(it / "metrics.jsonl")
        if recs:
            axes[1].plot([offset + r["epoch"] for r in recs], [r["loss"] for r in recs],
                         marker=".", label=it.name)
            offset += recs[-1]["epoch"]
    axes[1].axhline(0.6931, color="grey", linestyle=":", label="ln 2 (step 0)")
    axes[1].set(title="SPIN loss", xlabel="epoch (cumulative over iterations)", ylabel="loss")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def write_report(run: str | Path) -> dict:
    """Build summary.md and loss.png in ``run``; return their paths."""
    run = Path(run)
    sft = _load(run / "sft" / "result.json")
    ev = _load(run / "eval" / "result.json")
    its = [(_load(p / "result.json") or {}) for p in _iterations(run)]
    spin = _load(run / "spin" / "result.json")
    lines = [f"# spinlora run: {run.name}", ""]
    if ev:
        lines += [f"## GSM8K ({ev['prompt']}, {ev['shots']}-shot, greedy; n={ev['n']}, "
                  f"subset seed {ev['seed']})", "",
                  "| model | accuracy | ± stderr | gold logp/token | prefers gold | own answers "
                  "finished | trainable params | train s | peak MB over baseline |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in ev["rows"]:
            res = None
            if r["label"] == "lora_sft":
                res = sft
            elif r["label"].startswith("lora_spin_iter_"):
                k = int(r["label"].rsplit("_", 1)[1])
                res = its[k - 1] if k <= len(its) else None
            acc = (res or {}).get("accounting", {})
            train_s = acc.get("phases", {}).get("train", {}).get("seconds")
            params = (res or {}).get("parameters", {}).get("trainable")
            lines.append(
                f"| {r['label']} | {r['accuracy']:.3f} | {r['accuracy_stderr']:.3f} | "
                f"{r['gold_logp_per_token']:.3f} | {r['win_rate_gold_vs_own']:.2f} | "
                f"{r['own_finished_rate']:.2f} | {params if params is not None else '–'} | "
                f"{train_s if train_s is not None else '–'} | "
                f"{_mb(acc.get('peak_over_baseline_bytes')) if acc else '–'} |")
        lines.append("")
    if its:
        lines += ["## SPIN iterations", "",
                  "| iter | λ | lr | pairs | unfinished gens | step-0 loss (ln 2 = 0.6931) | "
                  "last loss | last margin | disc. acc | held-out gold logp/token | "
                  "held-out prefers gold |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in its:
            h = r.get("heldout") or {}
            lines.append(
                f"| {r['iteration']} | {r['beta']} | {r['lr']} | {r['pairs']} | "
                f"{r['generation']['unfinished']} | {r['step0_loss']:.4f} | {r['loss_last']:.4f} | "
                f"{r['margin_last']:.3f} | {r['disc_accuracy_last']:.2f} | "
                f"{h.get('gold_logp_per_token', float('nan')):.3f} | "
                f"{h.get('win_rate_gold_vs_own', float('nan')):.2f} |")
        if spin:
            lines += ["", f"Best iteration by `{spin['keep_best']}`: {spin['best_iteration']} "
                      "(0 = the starting adapter)."]
        lines.append("")
    lines += ["## Time, throughput and memory per phase", "",
              "| stage | phase | seconds | tokens | tokens/s | peak MB over baseline |",
              "|---|---|---|---|---|---|"]
    stages = [("sft", sft)] + [(f"spin iter {r.get('iteration')}", r) for r in its] + [("eval", ev)]
    for name, res in stages:
        for ph, d in ((res or {}).get("accounting", {}).get("phases", {})).items():
            lines.append(f"| {name} | {ph} | {d['seconds']:.1f} | {d['tokens']} | "
                         f"{d['tokens_per_s']:.1f} | {_mb(d['peak_over_baseline_bytes'])} |")
    out_md = run / "summary.md"
    out_md.write_text("\n".join(lines) + "\n")
    out_png = run / "loss.png"
    plot_losses(run, out_png)
    return {"summary": str(out_md), "plot": str(out_png)}
