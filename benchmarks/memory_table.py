"""Benchmark: memory of full fine-tuning vs LoRA vs QLoRA (NF4 + double quantisation) for SFT
and for one SPIN iteration on the embedded model; prints a Markdown table and JSON.

    python benchmarks/memory_table.py --out benchmarks/results/memory_table.json
    python benchmarks/memory_table.py --rows lora qlora --sft-examples 8

Each row is a separate process (peak RSS is per process), running the ordinary pipeline
(``stages: [sft, spin]``) with the same data, batch and lengths. Columns: post-load RSS (the
baseline: what the weights cost), the SFT and SPIN peaks over that baseline (the accountant's
per-phase peak; on a GPU, CUDA max-allocated), their sums (the whole process's need), trainable
parameters, the base weights' bytes, and seconds per SFT step.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ROWS = {  # name -> overrides
    "full": ["adapter.method=full", "train.lr=1e-5", "spin.lr=1e-6"],
    "lora": ["adapter.method=lora"],
    "lora+gc": ["adapter.method=lora", "train.gradient_checkpointing=true"],
    "qlora": ["adapter.method=lora", "model.quantization=nf4"],
    "qlora+gc": ["adapter.method=lora", "model.quantization=nf4", "train.gradient_checkpointing=true"],
    "lora-8bit": ["adapter.method=lora", "model.quantization=int8"],
}


def one(name: str, args, out_dir: Path) -> dict:
    from spinlora.config import load_config
    from spinlora.pipeline import run

    cfg = load_config(None, [
        f"output_dir={out_dir}", "overwrite=true", "stages=[sft, spin]",
        f"data.sft_examples={args.sft_examples}", f"data.max_length={args.max_length}",
        "data.overlong=truncate", f"train.batch_size={args.batch_size}",
        f"train.micro_batch_size={args.batch_size}", "train.log_every=100",
        "spin.iterations=1", f"spin.prompts={args.spin_prompts}", "spin.heldout=0",
        "spin.keep_best=null", f"generation.max_new_tokens={args.max_new_tokens}",
        "adapter.target_modules=[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]",
        *ROWS[name]])
    summary = run(cfg)
    sft = json.loads((out_dir / "sft" / "result.json").read_text())
    spin = json.loads((out_dir / "spin" / "iter_1" / "result.json").read_text())
    base = summary["post_load_baseline_bytes"]
    sft_peak = sft["accounting"]["peak_over_baseline_bytes"]
    spin_peak = spin["accounting"]["peak_over_baseline_bytes"]
    mb = lambda b: round(b / 2**20)  # noqa: E731
    return {"row": name, "overrides": ROWS[name], "memory_kind": sft["accounting"]["memory_kind"],
            "post_load_MB": mb(base), "sft_peak_over_MB": mb(sft_peak),
            "sft_total_MB": mb(base + sft_peak), "spin_peak_over_MB": mb(spin_peak),
            "spin_total_MB": mb(base + spin_peak), "trainable": sft["parameters"]["trainable"],
            "weight_MB": mb(sft["parameters"]["weight_bytes"]),
            "sft_s_per_step": round(sft["accounting"]["phases"]["train"]["seconds"] / sft["steps"], 2),
            "spin_iteration_s": spin["accounting"]["seconds_total"],
            "step0_ok": spin["step0_ok"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--sft-examples", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--spin-prompts", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--out")
    args = p.parse_args()
    if args.one:  # child process: one row
        with tempfile.TemporaryDirectory() as d:
            print("RESULT " + json.dumps(one(args.one, args, Path(d) / "run")), flush=True)
        return
    from _common import emit
    from spinlora.accounting import environment

    rows = []
    flags = ["--sft-examples", str(args.sft_examples), "--batch-size", str(args.batch_size),
             "--max-length", str(args.max_length), "--spin-prompts", str(args.spin_prompts),
             "--max-new-tokens", str(args.max_new_tokens)]
    for name in args.rows:
        proc = subprocess.run([sys.executable, __file__, "--one", name, *flags],
                              capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        row = json.loads(line[7:]) if line else {"row": name, "error": proc.stderr[-2000:]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    cols = ["row", "trainable", "weight_MB", "post_load_MB", "sft_peak_over_MB", "sft_total_MB",
            "spin_peak_over_MB", "spin_total_MB", "sft_s_per_step", "spin_iteration_s"]
    table = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    table += ["| " + " | ".join(str(r.get(c, "error")) for c in cols) + " |" for r in rows]
    print("\n".join(table))
    result = {"benchmark": "memory table", "args": vars(args), "environment": environment(),
              "rows": rows, "markdown": table}
    emit(result, args.out, echo=False)  # the rows were printed as they came


if __name__ == "__main__":
    main()
