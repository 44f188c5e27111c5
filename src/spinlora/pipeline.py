"""One run, top to bottom: load once -> SFT -> SPIN iterations -> evaluation -> report.

    from spinlora import load_config, run
    run(load_config("configs/demo.yaml", ["spin.iterations=1"]))

Run folder (``output_dir``)::

    config.yaml            the resolved config
    sft/                   adapter/, metrics.jsonl, result.json
    spin/iter_N/           adapter/, generations.jsonl, metrics.jsonl, result.json
    spin/best_adapter/     copy of the iteration with the best held-out metric (if not the start)
    rl/                    adapter/ (the last round's), round_N/ (adapter/, metrics.jsonl,
                           result.json), rounds.jsonl, metrics.jsonl, result.json
    eval/result.json       GSM8K table rows; eval/samples_<model>.jsonl the outputs
    run.json               status, timings, environment; summary.md + loss.png (the report)

A stage is written into ``<name>.partial`` and renamed when complete, so an interrupted or crashed
run keeps every finished stage and iteration intact and never leaves a half-written one under its
final name.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .accounting import (Accountant, MemoryMeter, count_parameters, environment,
                         fix_mmap_threshold, process_peak_rss)
from . import adapters
from . import dist, rundir, svamp
from .config import RunConfig, parse_bytes
from .rundir import OutputExistsError  # noqa: F401  (part of this module's API)
from .data import (ChatFormat, DataError, build_examples, load_rows, prompt_pool,
                   subset)
from .evaluate import evaluate_gsm8k
from .evaluate.gsm8k import (PROMPTING, REFLECT, evaluate_best_of_n, evaluate_self_consistency,
                             evaluate_svamp, evaluate_svamp_checked, fewshot_draws)
from .evaluate.choice import evaluate_choice_task
from .evaluate.tasks import DEFAULT_SHOTS, load_task
from .generate import decide_packing, packed_what, packing_skipped, pick_engine
from .models import load_model, pick_device
from .plan import MARGIN as PLAN_MARGIN
from .start import adapter_source, attach_adapter, model_to_load, sft_epochs, sft_set  # noqa: F401  (part of this module's API)
from .report import write_report
from .stages.sft import run_sft
from .stages.dpo import load_pairs, run_dpo
from .stages.rl import run_rl
from .stages.spin import run_spin


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, ``kill``): handled like Ctrl-C, so run.json tells the truth."""


def _on_sigterm(signum, frame):
    raise Terminated()


def run(cfg: RunConfig) -> dict:
    """Run the configured stages; return the run summary (also written to run.json)."""
    cfg.validate()
    out = rundir.prepare(cfg)  # holds the folder's lock until this run ends
    try:
        return _run_locked(cfg, out)
    finally:
        rundir.release(out)


def _run_locked(cfg: RunConfig, out: Path) -> dict:
    before = rundir.read_status(out) if cfg.resume else {}
    summary: dict = {rundir.MARKER: 1, "status": "running", "pid": os.getpid(),
                     "output_dir": str(out), "stages": {}, "processes": dist.world(),
                     "environment": environment()}
    if before.get("status") == "running":  # its process is gone (we hold the lock): killed
        summary["resumed_after"] = "killed"
        print(f"[spinlora] resume: the previous attempt (pid {before.get('pid', '?')}) was "
              "killed; its finished stages are reused")
    elif before:
        summary["resumed_after"] = before.get("status")
    if cfg.sft_adapter:  # --adapter: where it came from (a note when its run's settings differ)
        summary["adapter_source"] = adapter_source(cfg)
    rundir.write_json(out / "run.json", summary)
    t_start = time.perf_counter()
    abandoned = False
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _run_stages(cfg, out, summary)
        summary["status"] = "ok"
    except BaseException as e:
        # a failure before the run read its inputs (bad data, model, ...): nothing of it stays,
        # and a run it was to replace (--overwrite) is put back as it was
        abandoned = rundir.abandon(out)
        if abandoned:
            raise
        if isinstance(e, KeyboardInterrupt):
            summary["status"] = "interrupted"
            print(f"\n[spinlora] interrupted: finished stages are kept intact in {out}; "
                  "folders ending in .partial are incomplete")
            raise
        from .train import TrainingDiverged

        summary["status"] = ("oom" if _is_oom(e) else "diverged" if isinstance(e, TrainingDiverged)
                             else "error")
        summary["error"] = f"{type(e).__name__}: {e}"
        if _is_oom(e):
            print("[spinlora] out of memory: lower train.micro_batch_size or "
                  "generation.batch_size, set train.gradient_checkpointing=true, or lower "
                  f"data.max_length. Finished stages are kept in {out}")
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        if not abandoned:
            summary["wall_seconds"] = round(time.perf_counter() - t_start, 2)
            summary["process_peak_rss_bytes"] = process_peak_rss()  # CPU memory, GPU runs too
            rundir.write_json(out / "run.json", summary)
            if dist.is_main() and ((out / "sft" / "result.json").exists()
                                   or (out / "eval" / "result.json").exists()):
                try:
                    summary["report"] = write_report(out)
                except Exception as e:  # a broken report must not hide the run's own error
                    print(f"[spinlora] report failed: {e}")
    print(f"[spinlora] done in {summary['wall_seconds']:.0f}s, peak RSS "
          f"{summary['process_peak_rss_bytes'] / 1e9:.2f} GB. Outputs: {out.resolve()}")
    for name in ("summary.md", "report.html", "loss.png"):
        if (out / name).exists():
            print(f"  {out.resolve() / name}")
    if dist.is_main() and (out / "summary.md").is_file():  # the run ends with its tables
        for title, table in closing_tables(out / "summary.md"):
            print("\n" + (f"{title}\n" if title else "") + "\n".join(table))
    return summary


def closing_tables(summary_md: Path) -> list[tuple[str, list[str]]]:
    """The report's tables a run prints last: the comparison of every evaluated model, then the
    paired differences against the SFT model where the report has them (title, table rows)."""
    found, section = [], None
    for line in summary_md.read_text().splitlines():
        if line.startswith("## "):
            head = line[3:].strip()
            section = ("" if head == "Comparison" else
                       head if head.startswith("Paired differences") else None)
            if section is not None:
                found.append((section, []))
            continue
        if section is not None and line.startswith("|"):
            found[-1][1].append(line)
    return [(t, rows) for t, rows in found if rows]


def _stage(out: Path, summary: dict, name: str, state: str) -> None:
    """Record a stage's state in run.json at once: a killed run still lists what it finished."""
    summary["stages"][name] = state
    rundir.write_json(out / "run.json", summary)


def _run_stages(cfg: RunConfig, out: Path, summary: dict) -> None:
    device = pick_device(cfg.model.device)
    if device.type == "cpu":  # large tensors from their own mappings: no heap holes (accounting)
        summary["malloc_mmap_threshold"] = fix_mmap_threshold()
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    model_cfg, method = model_to_load(cfg)
    model, tok = load_model(model_cfg)
    summary["load_seconds"] = round(time.perf_counter() - t0, 2)
    if cfg.generation.engine == "llamacpp":  # refused before any stage runs, not per model
        pick_engine(model, cfg.generation)
    if cfg.memory_budget is not None:  # the packed copy (CPU generation) fits the budget or not
        decide_packing(model, int(parse_bytes(cfg.memory_budget) * (1 - PLAN_MARGIN))
                       - MemoryMeter(device).now())
    # what model.dtype / attn_implementation "auto" chose here, and the threads in force
    summary["precision"] = {"dtype": str(model.dtype).removeprefix("torch."),
                            "attention": model.config._attn_implementation,
                            "threads": torch.get_num_threads(),
                            "generation_linears": packed_what(model, cfg.generation),
                            "generation_engine": cfg.generation.engine}
    skipped = packing_skipped(model)
    if skipped:
        summary["precision"]["packed_copy_skipped"] = skipped
    pr, chosen = summary["precision"], " (model.dtype=auto)" if cfg.model.dtype == "auto" else ""
    trap = adapters.bf16_trap(model, method) if method else None
    if trap:
        print(f"[spinlora] warning: {trap}")
    if model_cfg is not cfg.model:
        chosen = (f" (model.dtype=auto: adapter.method={method} trains the model's own weights, "
                  "whose small updates bf16 would round away)")
    elif chosen and device.type == "cpu" and pr["dtype"] == "float32":
        # the README's CPU times come from CPUs with bf16 units (docs/svamp.md, "The main job")
        chosen = (" (model.dtype=auto: no bf16 units on this CPU; the README's demo time is from "
                  "a CPU with them, an AVX2 one took 11-18 minutes)")
    packed = (", generation from oneDNN-packed weights"
              if pr["generation_linears"] == "onednn_packed" else "")
    print(f"[spinlora] model in {pr['dtype']}{chosen}, {pr['attention']} attention, "
          f"{pr['threads']} threads{packed}")
    baseline = MemoryMeter(device).baseline  # every stage's peak is measured against this
    summary["post_load_baseline_bytes"] = baseline
    fmt = ChatFormat.from_config(tok, cfg.data)

    # The SFT set, a held-out slice of the same split (for keep-best), the evaluation subset.
    rows, chosen, rest, sft_examples, counts = sft_set(cfg, fmt)
    n_held = (cfg.spin.heldout if "spin" in cfg.stages or cfg.train.early_stop_every else
              cfg.rl.heldout if "rl" in cfg.stages else 0)
    held_rows = subset(rest, n_held, cfg.data.seed + 1) if n_held else []
    heldout, _ = build_examples([rows[i] for i in held_rows], fmt, cfg.data)
    summary["data"] = {"sft": counts, "heldout": len(heldout)}
    print(f"[spinlora] SFT set: {counts['kept']} examples ({counts['dropped_overlong']} dropped, "
          f"{counts['truncated_overlong']} truncated at data.max_length={cfg.data.max_length})"
          + "".join(f"; {counts[k]} {what}" for k, what in (
              ("with_distractor", "with a distractor"), ("with_conjoined_object",
              "with a second object"), ("asking_the_added_object", "asking about it"),
              ("asking_both_objects", "asking about both"),
              ("reordered", "reordered")) if k in counts))
    if not sft_examples and {"sft", "spin", "rl"} & set(cfg.stages):
        if not rows:
            raise DataError(f"data.train {cfg.data.train} holds no rows; point it at a file or "
                            "dataset with prompt / answer rows")
        advice = ("raise data.max_length or use data.overlong=truncate"
                  if cfg.data.overlong == "drop" else "raise data.max_length")
        raise DataError(f"data.train {cfg.data.train}: no example left to train on "
                        f"({counts['rows']} rows, {counts['dropped_overlong']} dropped as longer "
                        f"than data.max_length={cfg.data.max_length}); {advice}")
    for stage in ("spin", "rl"):  # a prompt pool with nothing in it fails before any training
        if stage in cfg.stages and sft_examples:
            prompt_pool(sft_examples, getattr(cfg, stage).prompt_rows, f"{stage}.prompt_rows")
    if "rl" in cfg.stages and sft_examples and cfg.rl.plain_prompts:
        prompt_pool(sft_examples, "plain", "rl.plain_prompts")
    if "spin" in cfg.stages and cfg.spin.keep_best and not heldout:
        print("[spinlora] note: no held-out rows left outside the SFT set; spin.keep_best and "
              "spin.early_stop are off for this run")
    # every evaluation input is read now: a bad benchmark file fails before any training
    inputs = eval_inputs(cfg, fmt) if "eval" in cfg.stages else None
    dpo_rows = load_pairs(cfg.dpo, cfg.data) if "dpo" in cfg.stages else None

    model, init_path = attach_adapter(cfg, model, out)
    params = count_parameters(model)
    summary["parameters"] = params
    print(f"[spinlora] trainable parameters: {params['trainable']:,} of {params['total']:,} "
          f"({params['trainable_pct']:.3f} %)")
    if cfg.memory_budget is not None and sft_examples:
        from .plan import apply, make_plan

        plan = make_plan(cfg, model, tok, sft_examples, device, parse_bytes(cfg.memory_budget))
        plan.chosen = dist.broadcast(plan.chosen)  # every process runs the main one's plan
        apply(cfg, plan)
        print(plan.table())
        summary["plan"] = plan.chosen
        # config.yaml stays the recipe as given (--resume compares against it and plans again)
        rundir.write_json(out / "plan.json", asdict(plan))
    new_acct = lambda: Accountant(device, baseline)  # noqa: E731  (one per stage/iteration)
    rundir.commit(out)  # config, data and model read: a run this one replaces goes now

    if "sft" in cfg.stages and cfg.resume and rundir.finished(out / "sft"):
        # a finished SFT is reused: its adapter is what SPIN starts from
        adapters.load_weights(model, cfg.adapter, out / "sft" / "adapter")
        _stage(out, summary, "sft", "reused")
        print(f"[spinlora] resume: SFT finished earlier, its adapter reused ({out / 'sft'})")
    elif "sft" in cfg.stages:
        part = rundir.begin(out / "sft")
        acct = new_acct()
        later = sft_epochs(cfg, fmt, rows, chosen, len(sft_examples))
        if cfg.data.augment_each_epoch and later is None:
            print("[spinlora] note: data.augment_each_epoch has nothing to draw anew "
                  "(data.distractors, data.conjoin and data.reorder are 0)")
        result = run_sft(cfg, model, tok, sft_examples, part, acct, init_path, heldout, fmt,
                         later)
        result.update(data=counts, accounting=acct.summary())
        rundir.finish(part, result)
        _stage(out, summary, "sft", "ok")

    if "spin" in cfg.stages and cfg.resume and rundir.finished(out / "spin"):
        _stage(out, summary, "spin", "reused")
        print("[spinlora] resume: SPIN finished earlier")
    elif "spin" in cfg.stages:
        result = run_spin(cfg, model, tok, fmt, sft_examples, heldout, out / "spin", new_acct,
                          init_path)
        rundir.write_json(out / "spin" / "result.json", result)
        _stage(out, summary, "spin", "ok")

    # RL and DPO: one folder each, built in .partial; a finished one is kept on --resume, and
    # so are RL's finished rounds inside an interrupted one (rl.partial/round_t)
    for name, stage in (("rl", lambda part, acct: run_rl(cfg, model, tok, fmt, sft_examples,
                                                         heldout, part, acct, init_path)),
                        ("dpo", lambda part, acct: run_dpo(cfg, model, tok, fmt, dpo_rows, part,
                                                           acct, init_path))):
        if name not in cfg.stages:
            continue
        if cfg.resume and rundir.finished(out / name):
            _stage(out, summary, name, "reused")
            print(f"[spinlora] resume: {name} finished earlier")
            continue
        part, acct = rundir.begin(out / name, keep=cfg.resume and name == "rl"), new_acct()
        result = stage(part, acct)
        result["accounting"] = acct.summary()
        rundir.finish(part, result)
        _stage(out, summary, name, "ok")

    if "eval" in cfg.stages and cfg.resume and rundir.finished(out / "eval"):
        _stage(out, summary, "eval", "reused")
    elif "eval" in cfg.stages:
        part = rundir.begin(out / "eval", keep=cfg.resume)
        done, earlier = [], None
        if (part / "result.json").is_file():  # --resume: models evaluated before the stop
            before = json.loads((part / "result.json").read_text())
            done = [dict(r, reused=True) for r in before["rows"] if "error" not in r]
            earlier = before.get("accounting")
        result = run_eval(cfg, model, tok, fmt, out, part, new_acct(), init_path, inputs, done,
                          earlier)
        rundir.finish(part, result)
        _stage(out, summary, "eval", "ok")


def eval_inputs(cfg: RunConfig, fmt: ChatFormat) -> tuple[list, list | None, dict]:
    """Read every evaluation input (GSM8K rows, k-shot exemplars, multiple-choice tasks). Called
    before any training, so a missing or malformed benchmark file fails in seconds, not after
    an hour of SFT and SPIN."""
    examples, shots = [], None
    if "gsm8k" in cfg.eval.tasks:
        rows = load_rows(cfg.data.eval, cfg.data, "test")
        picked = subset(range(len(rows)), cfg.eval.limit, cfg.eval.seed)
        examples, _ = build_examples([dict(rows[i], index=i) for i in picked], fmt, cfg.data)
        if not examples:
            raise DataError(f"data.eval {cfg.data.eval}: no question left to evaluate (all longer "
                            f"than data.max_length={cfg.data.max_length}?)")
        if cfg.eval.gsm8k_shots:  # exemplars from the training split, raw answers as lm-eval's
            draws = fewshot_draws(load_rows(cfg.data.train, cfg.data, "train"), len(rows),
                                  cfg.eval.gsm8k_shots,
                                  per_question=cfg.eval.gsm8k_fewshot == "per_question")
            shots = [draws[e.meta["index"]] for e in examples]
    choice_items = {t: subset(load_task(t, cfg.eval.data_root, cfg.eval.shots), cfg.eval.limit,
                              cfg.eval.seed) for t in cfg.eval.tasks if t not in ("gsm8k", "svamp")}
    if "svamp" in cfg.eval.tasks:  # generative: Examples (with their gold value), not Items
        try:
            rows = svamp.load_test(cfg.eval.data_root)
        except svamp.SvampError as e:
            raise DataError(str(e)) from None
        picked = subset(range(len(rows)), cfg.eval.limit, cfg.eval.seed)
        choice_items["svamp"], _ = build_examples([dict(rows[i], index=i) for i in picked], fmt,
                                                  cfg.data)
    return examples, shots, choice_items


def run_eval(cfg: RunConfig, model, tok, fmt: ChatFormat, run_dir: Path, part: Path,
             acct: Accountant, init_path: Path | None, inputs: tuple,
             done: list[dict] | None = None, earlier: dict | None = None) -> dict:
    """The configured tasks for base, SFT and each SPIN iteration, one model in memory.
    ``inputs``: what ``eval_inputs`` read before training; ``done``: rows of models already
    evaluated (a resumed run), kept as they are (marked ``reused``), with ``earlier``, the
    accounting of their phases, so their time and memory stay in the result."""

    examples, shots, choice_items = inputs
    targets: list[tuple[str, Path | None]] = []
    if "base" in cfg.eval.models:
        targets.append(("base", None))
    if "sft" in cfg.eval.models:
        sft_dir = run_dir / "sft" / "adapter"
        if sft_dir.exists():
            targets.append((f"{cfg.adapter.method}_sft", sft_dir))
        elif cfg.sft_adapter:
            targets.append((f"{cfg.adapter.method}_sft", Path(cfg.sft_adapter)))
    if "spin" in cfg.eval.models:
        its = sorted((run_dir / "spin").glob("iter_*/adapter"),
                     key=lambda p: int(p.parent.name.split("_")[1]))
        targets += [(f"{cfg.adapter.method}_spin_{p.parent.name}", p) for p in its]
    for stage in ("dpo", "rl"):
        if stage in cfg.eval.models and (run_dir / stage / "adapter").exists():
            targets.append((f"{cfg.adapter.method}_{stage}", run_dir / stage / "adapter"))
    mc_shots = {t: (cfg.eval.shots if cfg.eval.shots is not None else DEFAULT_SHOTS.get(t, 0))
                for t in choice_items}
    prompt = (f"{cfg.eval.gsm8k_shots}-shot ({cfg.eval.gsm8k_fewshot.replace('_', ' ')} "
              f"exemplars), {cfg.eval.gsm8k_style}" if cfg.eval.gsm8k_shots
              else "chat template, zero-shot")
    head = {"stage": "eval", "task": "gsm8k", "shots": cfg.eval.gsm8k_shots, "prompt": prompt,
            "generation": {"do_sample": cfg.generation.do_sample,
                           "max_new_tokens": cfg.generation.max_new_tokens,
                           **({"temperature": cfg.generation.temperature,
                               "top_p": cfg.generation.top_p, "seed": cfg.generation.seed}
                              if cfg.generation.do_sample else {})},
            "tasks": cfg.eval.tasks, "task_shots": {**({"gsm8k": cfg.eval.gsm8k_shots} if "gsm8k" in cfg.eval.tasks
                               else {}), **mc_shots},
            "limit": cfg.eval.limit, "seed": cfg.eval.seed, "n": len(examples)}
    if cfg.eval.prompting != ["standard"]:
        head["prompting"] = {m: {"suffix": PROMPTING[m] or None,
                                 **({"reflect_turn": REFLECT} if m == "reflection" else {})}
                             for m in cfg.eval.prompting}
    results = []
    finished = {r["label"]: r for r in done or []}
    # one row per model and mode, "LABEL+mode": the prompting baselines on GSM8K only; the
    # sampled rows (best_of_n, self_consistency) on GSM8K and SVAMP
    n, k = cfg.eval.best_of_n, cfg.eval.self_consistency
    beams = cfg.eval.checked_beams
    modes = (cfg.eval.prompting + (["best_of_n"] if n else [])
             + (["self_consistency"] if k else []) + (["checked"] if beams else []))
    names = {"standard": "", "best_of_n": f"+best_of_{n}", "self_consistency": f"+maj@{k}",
             "checked": f"+checked@{beams}"}
    rows = [(label + names.get(mode, f"+{mode}"), path, mode)
            for label, path in targets for mode in modes]
    if k:
        head["self_consistency"] = {"k": k, "temperature": cfg.eval.self_consistency_temperature}
    reranker = None
    if n:  # the reward model, loaded once for every model's best-of-n row
        from .reward_model import load_reranker

        reranker = load_reranker(cfg.eval.reward_model, cfg)
        head["best_of_n"] = {"n": n, "reward_model": cfg.eval.reward_model,
                             "temperature": cfg.eval.best_of_n_temperature}
    for label, path, mode in rows:
        if label in finished:
            results.append(finished[label])
            continue
        try:
            results.append(_eval_one(cfg, model, tok, fmt, part, acct, init_path, label, path,
                                     examples, shots, _mode_items(mode, choice_items), mode,
                                     reranker, _greedy_svamp(part, results, label, mode)))
        except Exception as e:  # noqa: BLE001  a failure costs only the model it happened on
            if _is_oom(e):
                raise
            print(f"[spinlora] eval {label} failed: {type(e).__name__}: {e}; going on with the "
                  "next model")
            results.append({"label": label, "adapter": str(path) if path else None, "tasks": {},
                            "error": f"{type(e).__name__}: {e}"})
        # written after every model: an interrupted evaluation keeps the models it finished
        rundir.write_json(part / "result.json", {**head, "complete": False, "rows": results,
                                                 "accounting": _merged(earlier, acct.summary())})
    return {**head, "complete": True, "rows": results,
            "accounting": _merged(earlier, acct.summary())}


def _merged(earlier: dict | None, now: dict) -> dict:
    """One evaluation's accounting from an interrupted attempt's phases and this one's."""
    if not earlier:
        return now
    phases = {**earlier.get("phases", {}), **now["phases"]}
    return {**now, "phases": phases,
            "seconds_total": round(sum(p["seconds"] for p in phases.values()), 3),
            "peak_over_baseline_bytes": max(earlier.get("peak_over_baseline_bytes", 0),
                                            now["peak_over_baseline_bytes"])}


def _greedy_svamp(part: Path, results: list[dict], label: str, mode: str
                  ) -> tuple[dict, list[dict]] | None:
    """For a ``MODEL+checked@k`` row: the SVAMP summary and samples of MODEL's greedy row when
    this evaluation finished it (its samples file is this folder's), so greedy runs once."""
    if mode != "checked":
        return None
    dist.barrier()  # several processes: the main one has written the greedy row's file
    base = label.rsplit("+", 1)[0]
    row = next((r for r in results if r["label"] == base and "svamp" in r.get("tasks", {})), None)
    path = part / f"samples_{base}_svamp.jsonl"
    if row is None or not path.is_file():
        return None
    with open(path) as f:
        return row["tasks"]["svamp"], [json.loads(line) for line in f if line.strip()]


def _mode_items(mode: str, choice_items: dict) -> dict:
    """The non-GSM8K tasks a row of this mode scores: all for the standard row, SVAMP for the
    sampled rows, none for the GSM8K prompting baselines."""
    if mode == "standard":
        return choice_items
    if mode in ("best_of_n", "self_consistency", "checked"):
        return {t: v for t, v in choice_items.items() if t == "svamp"}
    return {}


def _write_samples(part: Path, label: str, task: str, samples: list[dict]) -> None:
    if dist.is_main():
        name = f"samples_{label}_svamp.jsonl" if task == "svamp" else f"samples_{label}.jsonl"
        with open(part / name, "w") as f:
            for s in samples:
                f.write(json.dumps(s) + "\n")


def _sampled_tasks(cfg: RunConfig, examples, choice_items) -> list[tuple[str, list]]:
    """The tasks a sampled row (best-of-n, self-consistency) runs on: GSM8K and SVAMP."""
    return (([("gsm8k", examples)] if "gsm8k" in cfg.eval.tasks else [])
            + ([("svamp", choice_items["svamp"])] if "svamp" in choice_items else []))


def _eval_best_of_n(cfg: RunConfig, model, tok, fmt: ChatFormat, part: Path, acct: Accountant,
                    r: dict, examples, choice_items, reranker) -> dict:
    """The ``MODEL+best_of_n`` row: n samples reranked by the reward model, GSM8K and SVAMP."""
    n = cfg.eval.best_of_n
    for task, items in _sampled_tasks(cfg, examples, choice_items):
        b = evaluate_best_of_n(model, tok, fmt, items, cfg.generation, acct,
                               r["label"].rsplit("+", 1)[0], *reranker, n,
                               cfg.eval.best_of_n_temperature, task)
        _write_samples(part, r["label"], task, b.pop("samples"))
        r["tasks"].update(b.pop("tasks"))
        if task == "gsm8k":  # GSM8K fields stay at the top level of the row, as greedy's
            r.update(b)
        print(f"[spinlora] eval {r['label']}: {task} best of {n} by the reward model "
              f"{b['accuracy']:.3f} ± {b['accuracy_stderr']:.3f} (n={b['n']}; majority "
              f"{b['majority_accuracy']:.3f}, pass@{n} {b['pass_at_n']:.3f}, samples "
              f"{b['sample_accuracy']:.3f})")
    return r


def _eval_self_consistency(cfg: RunConfig, model, tok, fmt: ChatFormat, part: Path,
                           acct: Accountant, r: dict, examples, choice_items) -> dict:
    """The ``MODEL+maj@k`` row: self-consistency on GSM8K and SVAMP (whichever are tasks)."""
    k, temp = cfg.eval.self_consistency, cfg.eval.self_consistency_temperature
    label = r["label"]
    for task, items in _sampled_tasks(cfg, examples, choice_items):
        c = evaluate_self_consistency(model, tok, fmt, items, cfg.generation, acct, label, k,
                                      temp, task)
        _write_samples(part, label, task, c.pop("samples"))
        r["tasks"][task] = c
        if task == "gsm8k":  # GSM8K fields stay at the top level of the row, as greedy's
            r.update(n=c["n"], accuracy=c["acc"], accuracy_stderr=c["acc_stderr"])
        print(f"[spinlora] eval {label}: {task} majority of {k} samples (T {temp}) "
              f"{c['acc']:.3f} ± {c['acc_stderr']:.3f} (n={c['n']}; pass@{k} "
              f"{c['pass_at_k']:.3f}, samples {c['sample_acc']:.3f})")
    return r


def _eval_checked(cfg: RunConfig, model, tok, fmt: ChatFormat, part: Path, acct: Accountant,
                  r: dict, choice_items, greedy: tuple[dict, list[dict]] | None) -> dict:
    """The ``MODEL+checked@k`` row: SVAMP's greedy answers (the greedy row's, when this
    evaluation has them), those with a missing or negative value decoded again by a beam
    search of k beams (``evaluate_svamp_checked``)."""
    beams, label = cfg.eval.checked_beams, r["label"]
    c = evaluate_svamp_checked(model, tok, fmt, choice_items["svamp"], cfg.generation, acct,
                               label, beams, greedy)
    _write_samples(part, label, "svamp", c.pop("samples"))
    r["tasks"]["svamp"] = c
    print(f"[spinlora] eval {label}: SVAMP accuracy {c['acc']:.3f} ± {c['acc_stderr']:.3f} "
          f"(value of its equation, checked; greedy {c['greedy_acc']:.3f}; stated number "
          f"{c['stated_acc']:.3f}; n={c['n']})")
    return r


def _eval_one(cfg: RunConfig, model, tok, fmt: ChatFormat, part: Path, acct: Accountant,
              init_path: Path | None, label: str, path: Path | None, examples, shots,
              choice_items, prompting: str = "standard", reranker=None,
              greedy: tuple[dict, list[dict]] | None = None) -> dict:
    """Every configured task for one model (base when ``path`` is None, else that adapter)."""
    if path is not None:
        # load the saved weights into the one adapter in memory: no second model
        adapters.load_weights(model, cfg.adapter, path)
    with (adapters.load_base_view(model, cfg.adapter, init_path) if path is None
          else contextlib.nullcontext()):
        r = {"label": label, "adapter": str(path) if path else None, "tasks": {}}
        if prompting == "best_of_n":
            return _eval_best_of_n(cfg, model, tok, fmt, part, acct, r, examples, choice_items,
                                   reranker)
        if prompting == "self_consistency":
            return _eval_self_consistency(cfg, model, tok, fmt, part, acct, r, examples,
                                          choice_items)
        if prompting == "checked":
            return _eval_checked(cfg, model, tok, fmt, part, acct, r, choice_items, greedy)
        if "gsm8k" in cfg.eval.tasks:
            g = evaluate_gsm8k(model, tok, fmt, examples, cfg.generation, acct, label,
                               shots, cfg.eval.gsm8k_style, cfg.eval.gsm8k_generate, prompting)
            _write_samples(part, label, "gsm8k", g.pop("samples"))
            r.update(g)  # GSM8K fields stay at the top level of the row
            r["tasks"]["gsm8k"] = {"n": g["n"], "acc": g["accuracy"],
                                   "acc_stderr": g["accuracy_stderr"]}
            print(f"[spinlora] eval {label}: GSM8K accuracy {g['accuracy']} "
                  f"± {g['accuracy_stderr']} (n={g['n']}), gold logp/token "
                  f"{g['gold_logp_per_token']:.3f}, prefers gold {g['win_rate_gold_vs_own']}")
        for task, items in choice_items.items():
            if task == "svamp":
                c = evaluate_svamp(model, tok, fmt, items, cfg.generation, acct, label)
                _write_samples(part, label, "svamp", c.pop("samples"))
                r["tasks"][task] = c
                b = c["by_numbers"]
                print(f"[spinlora] eval {label}: SVAMP accuracy {c['acc']:.3f} ± "
                      f"{c['acc_stderr']:.3f} (value of its equation; stated number "
                      f"{c['stated_acc']:.3f}; n={c['n']}; with irrelevant numbers "
                      f"{b['irrelevant']['acc']:.3f} of {b['irrelevant']['n']}, without "
                      f"{b['relevant']['acc']:.3f} of {b['relevant']['n']})")
                continue
            with acct.phase(f"eval_{task}[{label}]"):
                c = evaluate_choice_task(model, tok, task, items, label)
            r["tasks"][task] = c
            print(f"[spinlora] eval {label}: {task} acc {c['acc']:.3f} ± {c['acc_stderr']:.3f}"
                  f" acc_norm {c['acc_norm']:.3f} (n={c['n']}, {c['examples_per_s']} ex/s)")
    return r
