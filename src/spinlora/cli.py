"""Command line: ``spinlora <run|sft|spin|eval|report> [CONFIG] [section.key=value ...]``.

    spinlora run configs/demo.yaml                      # SFT -> SPIN -> eval -> report
    spinlora sft configs/demo.yaml train.lr=1e-4        # one stage
    spinlora spin configs/demo.yaml --adapter runs/demo/sft/adapter --output-dir runs/spin2
    spinlora dpo configs/demo.yaml --adapter runs/demo/sft/adapter dpo.data=pairs.jsonl
    spinlora reward configs/demo.yaml reward.data=pairs.jsonl --output-dir runs/rm
    spinlora rl configs/demo.yaml --adapter runs/demo/sft/adapter --output-dir runs/rl
    spinlora eval configs/demo.yaml --adapter runs/demo/sft/adapter eval.limit=200
    spinlora report runs/demo
    spinlora sweep configs/sweep_lr.yaml                # methods x lrs x ranks x batch x seeds
    spinlora hessian configs/demo.yaml --adapter runs/demo/sft/adapter --k 8
    spinlora methods                                    # the adapter methods and what they support
    spinlora export runs/demo --merge --out merged/     # the run's adapter merged into the base
    spinlora plan configs/qwen05b_gsm8k.yaml --memory-budget 14GiB   # what fits, measured
    spinlora run configs/qwen05b_gsm8k.yaml --memory-budget 14GiB    # plan, then run with it
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# the stage each single-stage command runs; ``run`` takes the recipe's own ``stages`` (default
# sft, spin, eval), and ``reward`` trains its own model, outside the stages
STAGES = {"sft": ["sft"], "spin": ["spin"], "dpo": ["dpo"], "rl": ["rl"], "eval": ["eval"],
          "reward": []}


def config_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides a command line makes: the command's stage (single-stage commands), then
    KEY=VALUE as given, then the flags (--output-dir, --model, --adapter, --overwrite, --resume)."""
    out = [f"stages={STAGES[args.command]}"] if args.command in STAGES else []
    out += list(args.overrides)
    for flag, key in (("output_dir", "output_dir"), ("model", "model.name"),
                      ("adapter", "sft_adapter"), ("memory_budget", "memory_budget")):
        if getattr(args, flag, None):
            out.append(f"{key}={getattr(args, flag)}")
    out += [f"{flag}=true" for flag in ("overwrite", "resume") if getattr(args, flag, False)]
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="spinlora", description="LoRA-SPIN for small language models")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in [("run", "the stages a YAML recipe names (default: SFT -> SPIN -> eval)"),
                        ("sft", "SFT of a fresh adapter"),
                        ("spin", "SPIN iterations on an adapter (--adapter, or a fresh one)"),
                        ("dpo", "DPO on preference pairs (dpo.data) on an adapter (--adapter)"),
                        ("rl", "RL on an adapter: group-relative policy gradient, correctness reward"),
                        ("reward", "a Bradley-Terry reward model on preference pairs (reward.data)"),
                        ("eval", "evaluation of base / adapters"),
                        ("sweep", "a grid of runs (sweep.*), resumable; summary + plot"),
                        ("hessian", "top-k Hessian spectrum of the SFT loss in the adapter"),
                        ("plan", "measure what the recipe's stages need and print the settings "
                                 "that fit --memory-budget (trains nothing)")]:
        s = sub.add_parser(name, help=help_)
        s.add_argument("config", nargs="?", help="YAML recipe (defaults when omitted)")
        s.add_argument("overrides", nargs="*", help="section.key=value overrides")
        s.add_argument("--output-dir", help="run folder (output_dir)")
        s.add_argument("--model", help="Hub id, local directory, or SmolLM2-135M-Instruct")
        s.add_argument("--adapter", help="start from this saved adapter (sft_adapter)")
        s.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
        s.add_argument("--memory-budget", help="fit the run into this much device memory "
                                               "(e.g. 14GiB): memory_budget")
        s.add_argument("--resume", action="store_true",
                       help="continue the run in --output-dir (same config): finished stages and "
                            "SPIN iterations are reused, the interrupted one is redone")
        if name == "hessian":
            s.add_argument("--k", type=int, default=8, help="eigenvalues to compute")
            s.add_argument("--iters", type=int, default=None, help="Lanczos steps (default 3k)")
            s.add_argument("--examples", type=int, default=8, help="SFT rows in the loss")
            s.add_argument("--power-iters", type=int, default=30, help="power iteration cap")
            s.add_argument("--out", help="write the result JSON here")
    sub.add_parser("methods", help="list the adapter methods")
    e = sub.add_parser("export", help="a run's chosen adapter as a folder: plain peft, or "
                                      "--merge into a transformers checkpoint")
    e.add_argument("source", help="a run folder (its best / last adapter) or an adapter folder")
    e.add_argument("--out", required=True, help="folder to write")
    e.add_argument("--merge", action="store_true",
                   help="fold the adapter into the base weights (loads without peft)")
    e.add_argument("--model", help="base model (default: the run's model.name)")
    e.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    c = sub.add_parser("combine", help="one LoRA adapter with ΔW = Σ wᵢ·ΔWᵢ (exact: ranks add "
                                       "up), e.g. extrapolation past a method's end point")
    c.add_argument("terms", nargs="+", metavar="ADAPTER=WEIGHT",
                   help="adapter folders with their weights, e.g. runs/x/spin/iter_2/adapter=2 "
                        "runs/x/sft/adapter=-1")
    c.add_argument("--out", required=True, help="folder to write (plain peft)")
    c.add_argument("--model", help="base model (default: the adapters' base_model_name_or_path)")
    c.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    r = sub.add_parser("report", help="comparison table (md, csv), plots, HTML from run folders")
    r.add_argument("run_dirs", nargs="+")
    r.add_argument("--out", help="folder for the report (default: the first run folder)")
    # overrides may stand anywhere on the line: those after an option come back as extras
    args, extra = p.parse_known_args(argv)
    unknown = [x for x in extra if x.startswith("-") or "=" not in x]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)} (overrides look like "
                "section.key=value)")
    if extra and args.command == "combine":  # ADAPTER=WEIGHT terms after --out
        args.terms += extra
    elif extra:
        args.overrides = list(getattr(args, "overrides", []) or []) + extra
    if getattr(args, "config", None) and "=" in args.config:  # no config file, only overrides
        args.overrides.insert(0, args.config)
        args.config = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from .adapters import AdapterError
    from .config import ConfigError
    from .data import DataError
    from .models import ModelNotFoundError

    try:
        if args.command == "report":
            from .report import status_note, write_report

            for k, v in write_report(*args.run_dirs, out=args.out).items():
                print(f"{k}: {v}")
            for run in args.run_dirs:
                status, note = status_note(Path(run))
                if note:
                    print(f"[spinlora] note: {run}: status {status}: {note}")
            return 0
        if args.command == "export":
            from .export import export

            info = export(args.source, args.out, args.merge, args.model, args.dtype,
                          args.overwrite)
            print(json.dumps(info, indent=2))
            print(f"[spinlora] exported to {Path(args.out).resolve()}")
            return 0
        if args.command == "combine":
            from .combine import combine, parse_terms

            info = combine(parse_terms(args.terms), args.out, args.model, args.overwrite)
            print(json.dumps(info, indent=2))
            print(f"[spinlora] combined adapter written to {Path(args.out).resolve()}")
            return 0
        if args.command == "methods":
            from .adapters import table

            rows = table()
            print(" | ".join(rows[0]))
            for r in rows:
                print(" | ".join(str(v) for v in r.values()))
            return 0
        from .config import load_config
        from .pipeline import run

        cfg = load_config(args.config, config_overrides(args))
        if args.command == "sweep":
            from .sweep import run_sweep

            res = run_sweep(cfg)
            print(json.dumps(res["best"], indent=2))
            print(f"[sweep] {res['points']} points; {res['summary']}")
            return 0
        if args.command == "reward":
            from .stages.reward import run_reward

            res = run_reward(cfg)
            print(json.dumps({k: res[k] for k in ("pairs", "heldout_before", "heldout_after")},
                             indent=2))
            return 0
        if args.command == "plan":
            from .plan import run_plan

            plan = run_plan(cfg)
            print(plan.table())
            return 0
        if args.command == "hessian":
            from .hessian import run_hessian

            res = run_hessian(cfg, args.adapter, args.k, args.iters, args.examples, args.power_iters)
            print(json.dumps(res, indent=2))
            if args.out:
                Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
            return 0
        summary = run(cfg)
        return 0 if summary["status"] == "ok" else 1
    except (ConfigError, DataError, ModelNotFoundError, AdapterError, FileNotFoundError,
            FileExistsError) as e:
        print(f"spinlora: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
