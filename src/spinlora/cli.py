"""Command line: ``spinlora <run|sft|spin|eval|report> [CONFIG] [section.key=value ...]``.

    spinlora run configs/demo.yaml                      # SFT -> SPIN -> eval -> report
    spinlora sft configs/demo.yaml train.lr=1e-4        # one stage
    spinlora spin configs/demo.yaml --adapter runs/demo/sft/adapter --output-dir runs/spin2
    spinlora eval configs/demo.yaml --adapter runs/demo/sft/adapter eval.limit=200
    spinlora report runs/demo
"""
from __future__ import annotations

import argparse
import sys

STAGES = {"run": ["sft", "spin", "eval"], "sft": ["sft"], "spin": ["spin"], "eval": ["eval"]}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="spinlora", description="LoRA-SPIN for small language models")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in [("run", "SFT -> SPIN -> eval from a YAML recipe"),
                        ("sft", "SFT of a fresh adapter"),
                        ("spin", "SPIN iterations on an adapter (--adapter, or a fresh one)"),
                        ("eval", "GSM8K evaluation of base / adapters")]:
        s = sub.add_parser(name, help=help_)
        s.add_argument("config", nargs="?", help="YAML recipe (defaults when omitted)")
        s.add_argument("overrides", nargs="*", help="section.key=value overrides")
        s.add_argument("--output-dir", help="run folder (output_dir)")
        s.add_argument("--model", help="Hub id, local directory, or SmolLM2-135M-Instruct")
        s.add_argument("--adapter", help="start from this saved adapter (sft_adapter)")
        s.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    r = sub.add_parser("report", help="comparison table (md, csv), plots, HTML from run folders")
    r.add_argument("run_dirs", nargs="+")
    r.add_argument("--out", help="folder for the report (default: the first run folder)")
    args = p.parse_args(argv)
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
            from .report import write_report

            for k, v in write_report(*args.run_dirs, out=args.out).items():
                print(f"{k}: {v}")
            return 0
        from .config import load_config
        from .pipeline import run

        overrides = [f"stages={STAGES[args.command]}"] + list(args.overrides)
        if args.output_dir:
            overrides.append(f"output_dir={args.output_dir}")
        if args.model:
            overrides.append(f"model.name={args.model}")
        if args.adapter:
            overrides.append(f"sft_adapter={args.adapter}")
        if args.overwrite:
            overrides.append("overwrite=true")
        cfg = load_config(args.config, overrides)
        summary = run(cfg)
        return 0 if summary["status"] == "ok" else 1
    except (ConfigError, DataError, ModelNotFoundError, AdapterError, FileNotFoundError) as e:
        print(f"spinlora: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
