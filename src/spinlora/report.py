"""The comparison report, from result files only (nothing here recomputes a number).

    spinlora report runs/demo [runs/other ...]

Writes into the first run folder (or ``--out``):
- ``summary.md`` / ``comparison.csv``: rows = run + model/method (+ SPIN iteration); columns =
  task scores ± standard error (shots, subset size and seed in the header), trainable parameters,
  peak memory over the post-load baseline, training time; in ``summary.md`` then the paired
  differences against the SFT model on the same problems (SVAMP, GSM8K) and a warning where the
  runs evaluated on different machines or dtypes; then GSM8K diagnostics, SPIN iterations and
  per-phase time and memory;
- ``loss.png`` (loss by epoch, SFT and each SPIN iteration), ``scores.png`` (score by SPIN
  iteration per task), ``spin_diagnostics.png`` (reward margin, and the change of gold and
  generated log-probs against the reference by step: likelihood displacement shows as both
  falling while the margin grows; raw log-probs per step are in metrics.jsonl);
- ``report.html``: the tables and the plots in one page that opens offline.
"""
from __future__ import annotations

import base64
import csv
import html
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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _stage_result(run: Path, label: str) -> dict | None:
    label = label.split("+")[0]  # "MODEL+mode": a prompting baseline of MODEL
    if label.endswith("_sft"):
        return _load(run / "sft" / "result.json")
    if "_spin_iter_" in label:
        return _load(run / "spin" / f"iter_{label.rsplit('_', 1)[1]}" / "result.json")
    for stage in ("dpo", "rl"):
        if label.endswith(f"_{stage}"):
            return _load(run / stage / "result.json")
    return None


def comparison_rows(runs: list[Path]) -> tuple[list[str], list[dict]]:
    """One row per (run, evaluated model); task columns from the eval result files."""
    tasks: list[str] = []
    rows = []
    for run in runs:
        ev = _load(run / "eval" / "result.json")
        if not ev:
            continue
        for r in ev["rows"]:
            res = _stage_result(run, r["label"]) or {}
            acc = res.get("accounting", {})
            row = {"run": run.name, "model": r["label"],
                   "trainable_params": res.get("parameters", {}).get("trainable"),
                   "train_seconds": acc.get("phases", {}).get("train", {}).get("seconds"),
                   "peak_MB_over_baseline": (round(acc["peak_over_baseline_bytes"] / 2**20)
                                             if acc else None)}
            task_scores = r.get("tasks") or {"gsm8k": {"acc": r.get("accuracy"),
                                                       "acc_stderr": r.get("accuracy_stderr"),
                                                       "n": r.get("n")}}
            for task, sc in task_scores.items():
                if task not in tasks:
                    tasks.append(task)
                row[task] = sc.get("acc")
                row[f"{task}_stderr"] = sc.get("acc_stderr")
                row[f"{task}_n"] = sc.get("n")
                if "acc_norm" in sc:
                    row[f"{task}_acc_norm"] = sc["acc_norm"]
                if "acc_macro" in sc:
                    row[f"{task}_macro"] = sc["acc_macro"]
            rows.append(row)
    return tasks, rows


def _column_notes(runs: list[Path]) -> list[str]:
    notes = []
    for run in runs:
        ev = _load(run / "eval" / "result.json")
        if ev:
            shots = ev.get("task_shots", {"gsm8k": ev.get("shots", 0)})
            gsm8k = f"; GSM8K {ev['prompt']}" if "gsm8k" in shots else ""
            notes.append(f"{run.name}: " + ", ".join(
                f"{t} {k}-shot" for t, k in shots.items()) +
                f"; subset limit {ev['limit']} (seed {ev['seed']}){gsm8k}, "
                + ("sampled" if ev.get("generation", {}).get("do_sample") else "greedy")
                + _checked_note(ev))
    return notes


def _checked_note(ev: dict) -> str:
    """How a ``+checked@k`` row decodes (``eval.checked_beams``), where the run has one: its
    answers are not all greedy."""
    beams = {r["tasks"][t]["checked_beams"] for r in ev.get("rows", [])
             for t in r.get("tasks", {}) if "checked_beams" in r["tasks"][t]}
    return "".join(f" (+checked@{k}: greedy, and a {k}-beam search where the greedy answer's "
                   "value is missing or negative)" for k in sorted(beams))


def plot_losses(run: Path, dest: Path) -> None:
    """Loss by epoch: SFT, then each SPIN iteration offset by the epochs before it."""
    plt = _plt()
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


def plot_scores(tasks: list[str], rows: list[dict], dest: Path) -> None:
    """Score by SPIN iteration per task (0 = LoRA-SFT; base as a dotted line)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for run in dict.fromkeys(r["run"] for r in rows):
        mine = [r for r in rows if r["run"] == run]
        for task in tasks:
            pts = []
            for r in mine:
                if "+" in r["model"]:
                    continue  # prompting baselines are rows of the table, not of this plot
                if r["model"].endswith("_sft"):
                    pts.append((0, r.get(task)))
                elif "_spin_iter_" in r["model"]:
                    pts.append((int(r["model"].rsplit("_", 1)[1]), r.get(task)))
            pts = sorted(p for p in pts if p[1] is not None)
            if pts:
                line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                               label=f"{run}: {task}")[0]
                base = next((r.get(task) for r in mine if r["model"] == "base"), None)
                if base is not None:
                    ax.axhline(base, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set(title="score by SPIN iteration (0 = LoRA-SFT, dotted = base)",
           xlabel="SPIN iteration", ylabel="accuracy")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def plot_spin_diagnostics(run: Path, dest: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    step = 0
    for it in _iterations(run):
        recs = _jsonl(it / "metrics.jsonl")
        xs = list(range(step, step + len(recs)))
        step += len(recs)
        if not recs:
            continue
        axes[0].plot(xs, [r["margin"] for r in recs], marker=".", label=f"{it.name} margin")
        # change of log p against the reference, not raw log p: batches differ in length, so
        # raw sums jump from batch to batch while the change is comparable
        axes[1].plot(xs, [r["reward_real"] / r["beta"] for r in recs], marker=".",
                     label=f"{it.name} gold y")
        axes[1].plot(xs, [r["reward_gen"] / r["beta"] for r in recs], marker="x",
                     label=f"{it.name} generated y'")
    axes[0].set(title="reward margin λ·Δ (mean per pair)", xlabel="step")
    axes[1].axhline(0, color="grey", linestyle=":")
    axes[1].set(title="log p(y|x) − log p_t(y|x), mean per pair\n(both below 0 = likelihood "
                "displacement)", xlabel="step")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dest, dpi=110)
    plt.close(fig)


def _samples_file(run: Path, label: str, task: str) -> Path | None:
    """The per-problem verdicts evaluation saved for ``label`` on ``task`` (SVAMP, GSM8K)."""
    name = {"svamp": f"samples_{label}_svamp.jsonl", "gsm8k": f"samples_{label}.jsonl"}.get(task)
    for p in ((run / "eval" / name, run / "eval" / f"{name}.gz") if name else ()):
        if p.is_file():
            return p
    return None


def paired_lines(runs: list[Path], tasks: list[str]) -> list[str]:
    """The paired differences of every evaluated model against one reference on the same
    problems (``spinlora.paired``): the first run's SFT model, else its first model. Two
    models' standard errors overlap long before their paired difference is noise."""
    from .paired import compare, read_samples

    found = []  # (run, label, {task: samples path})
    for run in runs:
        for r in (_load(run / "eval" / "result.json") or {}).get("rows", []):
            files = {t: f for t in tasks if (f := _samples_file(run, r["label"], t))}
            if files:
                found.append((run, r["label"], files))
    if len(found) < 2:
        return []
    ref = next((x for x in found if x[1].endswith("_sft")), found[0])
    ptasks = [t for t in tasks if t in ref[2]]
    try:
        refs = {t: read_samples(ref[2][t]) for t in ptasks}
    except ValueError as e:  # a damaged samples file: the rest of the report still stands
        return [f"Paired differences left out: {e}", ""]
    # SVAMP also by its "irrelevant information" variation, where the reference's samples
    # carry the flag (evaluations since it was added): the two parts often move apart
    cols = [(t, None) for t in ptasks]
    if "svamp" in refs and all("irrelevant_numbers" in x for x in refs["svamp"].values()):
        cols += [("svamp", True), ("svamp", False)]
    names = {None: "", True: ": irrelevant numbers", False: ": the rest"}
    lines = [f"## Paired differences against {ref[0].name} / {ref[1]}", "",
             "Δ in points over the problems both models answered, ± its paired standard error "
             "(gained / lost problems, n).", "",
             "| run | model | " + " | ".join(t + names[part] for t, part in cols) + " |",
             "|---|---|" + "---|" * len(cols)]

    def part_of(rows: dict, part):
        return rows if part is None else {k: x for k, x in rows.items()
                                          if x.get("irrelevant_numbers") is part}

    ref_parts = {(t, part): part_of(refs[t], part) for t, part in cols}
    for run, label, files in found:
        if (run, label) == ref[:2]:
            continue
        other = {}  # each samples file read once, whatever its columns
        for t in ptasks:
            try:
                if t in files:
                    other[t] = read_samples(files[t])
            except ValueError:  # a damaged file: its cells stay empty
                pass
        cells = []
        for t, part in cols:
            try:
                c = (compare(ref_parts[t, part], part_of(other[t], part))
                     if t in other else None)
            except ValueError:  # no shared problem (another subset)
                c = None
            cells.append("–" if c is None else
                         f"{100 * c['delta']:+.1f} ± {100 * c['delta_se']:.1f} "
                         f"(+{c['gained']} / −{c['lost']}, {c['n']})")
        lines.append(f"| {run.name} | {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def machine(run: Path) -> str | None:
    """Where a run evaluated: its CPU (model and bf16 / int8 instruction sets) or GPU, and its
    dtype, from run.json; None for a run that did not record it."""
    rec = _load(run / "run.json") or {}
    env, prec = rec.get("environment") or {}, rec.get("precision") or {}
    where = env.get("cuda") or (env.get("cpu") or {}).get("model")
    if not where:
        return None
    isa = "" if env.get("cuda") else " (" + ", ".join((env.get("cpu") or {}).get("isa") or []) + ")"
    return f"{where}{isa}, {prec.get('dtype', '?')}"


def machine_lines(runs: list[Path]) -> list[str]:
    """A warning when the runs compared evaluated on different machines or dtypes: greedy
    answers in bf16 follow the kernels' rounding, which differs between CPUs."""
    seen = [(r.name, machine(r)) for r in runs]  # a list: two runs may share a folder name
    if len({v for _, v in seen if v}) < 2:
        return []
    return ["**These runs evaluated on different machines or dtypes**: "
            + "; ".join(f"{k}: {v or 'not recorded'}" for k, v in seen)
            + ". Greedy bf16 answers follow the kernels' rounding, which differs between CPUs, "
            "so a difference between these runs mixes the models' difference with the "
            "machines'. Evaluate them on one machine to compare them.", ""]


def _cell(row: dict, key: str, spec: str, missing: str = "–") -> str:
    """``row[key]`` formatted with ``spec``; ``missing`` where the field is absent or None."""
    return missing if row.get(key) is None else format(row[key], spec)


def _fmt(v, nd=3) -> str:
    if v is None:
        return "–"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def write_report(*runs: str | Path, out: str | Path | None = None) -> dict:
    """Build the report for one or more run folders; return the paths written."""
    runs_p = [Path(r) for r in runs]
    for r in runs_p:
        if not r.is_dir():
            raise FileNotFoundError(f"run folder {r} not found")
    dest = Path(out) if out else runs_p[0]
    dest.mkdir(parents=True, exist_ok=True)
    tasks, rows = comparison_rows(runs_p)
    lines = [f"# spinlora report: {', '.join(r.name for r in runs_p)}", ""]
    if rows:
        lines += ["## Comparison", ""] + [f"- {n}" for n in _column_notes(runs_p)] + [""]
        head = ["run", "model"] + [f"{t} (± se, n)" for t in tasks] + [
            "trainable params", "train s", "peak MB over baseline"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [r["run"], r["model"]] + [
                f"{_fmt(r.get(t))} ± {_fmt(r.get(t + '_stderr'))} ({r.get(t + '_n')})"
                if r.get(t) is not None else "–" for t in tasks] + [
                _fmt(r["trainable_params"]), _fmt(r["train_seconds"], 1),
                _fmt(r["peak_MB_over_baseline"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += machine_lines(runs_p) + paired_lines(runs_p, tasks)
    for run in runs_p:
        lines += _run_details(run)
    md = dest / "summary.md"
    md.write_text("\n".join(lines) + "\n")
    out_csv = dest / "comparison.csv"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    pngs = {"loss": dest / "loss.png", "scores": dest / "scores.png",
            "spin_diagnostics": dest / "spin_diagnostics.png"}
    plot_losses(runs_p[0], pngs["loss"])
    plot_scores(tasks, rows, pngs["scores"])
    plot_spin_diagnostics(runs_p[0], pngs["spin_diagnostics"])
    page = dest / "report.html"
    page.write_text(_html(lines, pngs))
    return {"summary": str(md), "csv": str(out_csv), "html": str(page),
            **{k: str(v) for k, v in pngs.items()}}


def _ok(flag) -> str:
    return "held" if flag else "FAILED" if flag is not None else "not recorded"


def status_note(run: Path) -> tuple[str | None, str | None]:
    """How the run ended (``rundir.state``) and, where it did not end ``ok``, what that means
    and what to do; ``(None, None)`` for a folder that holds no run."""
    from . import rundir

    status = rundir.state(run)
    if status is None or status == "ok":
        return status, None
    resume = rundir.RESUME_HINT.format(run=run)
    why = {"running": "still running (a live process holds it); this report shows what it "
                      "has finished so far",
           "killed": "its process ended without recording an end (killed by a signal, or the "
                     "machine stopped); " + resume,
           "interrupted": "stopped (Ctrl-C or SIGTERM); " + resume}
    error = (rundir.read_status(run).get("error") or "").strip()
    return status, why.get(status, (error + "; " if error else "") + resume)


def _status_lines(run: Path) -> list[str]:
    status, note = status_note(run)
    if note is None:
        return [f"Status: {status or 'no run.json'}.", ""]
    return [f"**Status: {status}**: {note}.", ""]


def _run_details(run: Path) -> list[str]:
    sft = _load(run / "sft" / "result.json")
    ev = _load(run / "eval" / "result.json")
    its = [(_load(p / "result.json") or {}) for p in _iterations(run)]
    spin = _load(run / "spin" / "result.json")
    lines = [f"## Run {run.name}", ""] + _status_lines(run)
    gsm_rows = [r for r in (ev or {}).get("rows", []) if "gold_logp_per_token" in r]
    if gsm_rows:
        lines += [f"### GSM8K ({ev['prompt']}, greedy; n={ev['n']}, subset seed {ev['seed']})", "",
                  "| model | accuracy | ± stderr | gold logp/token | own logp/token | prefers gold "
                  "| own answers finished | own mean tokens |", "|---|---|---|---|---|---|---|---|"]
        for r in gsm_rows:  # fields are None when the run did not generate (eval.gsm8k_generate)
            f = lambda k, spec: _cell(r, k, spec)  # noqa: E731
            lines.append(f"| {r['label']} | {f('accuracy', '.3f')} | {f('accuracy_stderr', '.3f')} | "
                         f"{f('gold_logp_per_token', '.3f')} | {f('own_logp_per_token', '.3f')} | "
                         f"{f('win_rate_gold_vs_own', '.2f')} | "
                         f"{f('own_finished_rate', '.2f')} | {f('own_mean_tokens', '.0f')} |")
        lines.append("")
    mmlu = [(r["label"], r["tasks"]["mmlu"]) for r in (ev or {}).get("rows", [])
            if "per_subject" in r.get("tasks", {}).get("mmlu", {})]
    if mmlu:
        subjects = list(mmlu[0][1]["per_subject"])
        lines += ["### MMLU per subject (accuracy)", "",
                  "| subject | " + " | ".join(label for label, _ in mmlu) + " |",
                  "|---|" + "---|" * len(mmlu)]
        for subj in subjects:
            lines.append(f"| {subj} | " + " | ".join(
                _fmt(m["per_subject"].get(subj)) for _, m in mmlu) + " |")
        lines.append("| **macro average** | " + " | ".join(_fmt(m["acc_macro"]) for _, m in mmlu)
                     + " |")
        lines.append("")
    if its:
        lines += ["### SPIN iterations", "",
                  "| iter | loss | λ | lr | pairs | opponent correct (dropped) | unfinished gens | "
                  "step-0 preference loss (expected) | last loss | last margin | disc. acc | "
                  "held-out acc | held-out gold logp/token | held-out prefers gold |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in its:
            h, g = r.get("heldout") or {}, r["generation"]
            acc = h.get("accuracy")
            expected = (f"{r.get('step0_expected', 0.6931):.4f}" if "step0_ok" not in r
                        or r["step0_ok"] is not None else "unchecked: reference = start")
            lines.append(
                f"| {r['iteration']} | {r.get('loss', 'sigmoid')} | {r['beta']} | {r['lr']} | "
                f"{r['pairs']} | {g.get('opponent_correct', '-')} ({g.get('dropped_correct', 0)}) | "
                f"{g['unfinished']} | {r.get('step0_pref_loss', r['step0_loss']):.4f} "
                f"({expected}) | {r['loss_last']:.4f} | "
                f"{r['margin_last']:.3f} | {r['disc_accuracy_last']:.2f} | "
                f"{'-' if acc is None else f'{acc:.3f}'} | "
                f"{h.get('gold_logp_per_token', float('nan')):.3f} | "
                f"{h.get('win_rate_gold_vs_own', float('nan')):.2f} |")
        if spin:
            lines += ["", f"Best iteration by `{spin['keep_best']}`: {spin['best_iteration']} "
                      "(0 = the starting adapter)."]
        lines.append("")
    rl, dpo = _load(run / "rl" / "result.json"), _load(run / "dpo" / "result.json")
    if rl and rl.get("rounds"):
        rft = rl.get("algorithm") == "rft"
        how = (f"rejection-sampling fine-tuning, up to {rl.get('keep') or 'all'} right answers kept"
               if rft else f"{rl.get('advantage', '?')}, β {rl.get('beta', '?')}")
        lines += [f"### RL rounds ({how}, lr {rl.get('lr', '?')}, "
                  f"{rl.get('samples_per_prompt', '?')} samples a prompt)", "",
                  "| round | prompts | samples | mean reward | groups with signal | trained samples "
                  "| steps | step-0 ratio | step-0 KL | last loss | last KL |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rl["rounds"]:  # a round whose groups all agreed trained nothing: "-"
            f = lambda k, spec: _cell(r, k, spec, "-")  # noqa: E731
            lines.append(f"| {r['round']} | {r['prompts']} | {r['samples']} | "
                         f"{r['reward_mean']:.3f} | {r['informative_groups']} | "
                         f"{r['trained_samples']} | {f('steps', 'd')} | {f('step0_ratio', '.4f')} | "
                         f"{f('step0_kl', '.4f')} | {f('loss_last', '.4f')} | "
                         f"{f('kl_last', '.4f')} |")
        lines += ["", "Groups with signal: prompts with a right answer kept; no ratio or KL (an "
                  "NLL fit of the kept answers)." if rft else
                  f"Step-0 checks: ratio 1 in every round {_ok(rl.get('step0_ratio_ok'))}; "
                  f"KL 0 in the first round {_ok(rl.get('first_round_kl0_ok'))}.", ""]
    lines += ["### Time, throughput and memory per phase", "",
              "| stage | phase | seconds | tokens | tokens/s | peak MB over baseline |",
              "|---|---|---|---|---|---|"]
    stages = ([("sft", sft)] + [(f"spin iter {r.get('iteration')}", r) for r in its]
              + [("rl", rl), ("dpo", dpo), ("eval", ev)])
    for name, res in stages:
        for ph, d in ((res or {}).get("accounting", {}).get("phases", {})).items():
            lines.append(f"| {name} | {ph} | {d['seconds']:.1f} | {d['tokens']} | "
                         f"{d['tokens_per_s']:.1f} | {_mb(d['peak_over_baseline_bytes'])} |")
    lines.append("")
    return lines


def _html(md_lines: list[str], pngs: dict[str, Path]) -> str:
    """A self-contained page: Markdown tables rendered as HTML tables, plots inlined as base64."""
    body, table = [], []

    def flush():
        if table:
            rows = [r.strip().strip("|").split("|") for r in table if not set(r) <= set("|-: ")]
            body.append("<table>" + "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c.strip())}"
                                 f"</{'th' if i == 0 else 'td'}>" for c in r) + "</tr>"
                for i, r in enumerate(rows)) + "</table>")
            table.clear()

    for line in md_lines:
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 4)
            body.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            body.append(f"<p>{html.escape(line.lstrip('- '))}</p>")
    flush()
    for name, p in pngs.items():
        if p.is_file():
            data = base64.b64encode(p.read_bytes()).decode()
            body.append(f"<h3>{name}</h3><img alt='{name}' src='data:image/png;base64,{data}'>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}table{border-collapse:"
             "collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
             "img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>spinlora report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
