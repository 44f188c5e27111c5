"""How close the memory planner's predictions come to what runs then measure.

    python benchmarks/plan_accuracy.py --out benchmarks/results/plan_accuracy_cpu.json

One process makes the plan (``plan.make_plan``: probes at 1 and 2 rows, with and without
gradient checkpointing); then, each in a fresh process as a user would run it, an SFT run per
micro-batch size (with and without checkpointing) and a one-iteration SPIN run per micro-batch
size, from the same recipe. Each run's own accounting gives the peak of the whole process in its
training phase (SPIN: also its generation phase), which is what a budget bounds; the table sets
the plan's figure beside it: what the planning process held once model, data and adapter were
loaded, plus the phase's predicted bytes (the straight line through the 1- and 2-row probes,
which is what a CPU plan uses; on CUDA a chosen micro-batch above 2 is probed again,
``plan._verify``, not measured here). CPU: process RSS; GPU: CUDA max-allocated.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from spinlora.accounting import environment  # noqa: E402


def predictions(config: str, overrides: list[str]) -> dict:
    from spinlora.config import load_config
    from spinlora.data import ChatFormat
    from spinlora.models import load_model, pick_device
    from spinlora.pipeline import attach_adapter, sft_set
    from spinlora.plan import make_plan

    cfg = load_config(config, overrides + ["stages=[sft,spin]"])
    device = pick_device(cfg.model.device)
    model, tok = load_model(cfg.model)
    examples = sft_set(cfg, ChatFormat.from_config(tok, cfg.data))[3]
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = attach_adapter(cfg, model, Path(tmp))
    plan = make_plan(cfg, model, tok, examples, device, 10**13)  # room for everything
    return {"costs": plan.costs, "loaded_bytes": plan.loaded_bytes,
            "longest_sft_tokens": max(len(e.prompt_ids) + len(e.answer_ids) for e in examples)}


def _mb(pred: dict, cost: dict, rows: int) -> int:
    """Predicted peak of the whole process in MB: what the planning process held once the model,
    data and adapter were loaded, plus the phase's fixed + per-row bytes."""
    return round((pred["loaded_bytes"] + cost["fixed"] + cost["per_row"] * rows) / 2**20)


def run(args: list[str]) -> dict:
    subprocess.run([sys.executable, "-m", "spinlora", *args], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--micro", default="1,2,4,8", help="micro-batch sizes to run")
    ap.add_argument("--out", default=None)
    ap.add_argument("--reuse", help="a result file of this benchmark: take its measured runs "
                                    "(same config) and make only the predictions anew")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    micro = [int(x) for x in a.micro.split(",")]
    pred = predictions(a.config, a.overrides)
    if a.reuse:
        old = json.loads(Path(a.reuse).read_text())
        rows = [{k: v for k, v in r.items() if k not in ("predicted_MB", "error_pct")}
                for r in old["rows"]]
        for r in rows:
            if r["phase"] == "spin generate":
                g = pred["costs"]["generation"]
                r["predicted_MB"] = _mb(pred, g, int(g["setting"].split()[0]))
            else:
                c = pred["costs"][r["phase"].split()[0]][
                    "with_checkpointing" if r["checkpointing"] else "without_checkpointing"]
                r["predicted_MB"] = _mb(pred, c, r["micro_batch"])
        measured_at = old["environment"].get("git_commit")
    else:
        rows, measured_at = measure(a, micro, pred), None
    finish(a, pred, rows, measured_at)


def measure(a, micro: list[int], pred: dict) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ckpt in (False, True):
            for m in micro:
                out = Path(tmp) / f"sft_{m}_{ckpt}"
                run(["sft", a.config, *a.overrides, f"train.micro_batch_size={m}",
                     f"train.gradient_checkpointing={str(ckpt).lower()}", "--output-dir", str(out)])
                res = json.loads((out / "sft" / "result.json").read_text())
                c = pred["costs"]["sft"]["with_checkpointing" if ckpt else "without_checkpointing"]
                measured = res["accounting"]["phases"]["train"]["peak_bytes"]
                rows.append({"phase": "sft train", "micro_batch": m, "checkpointing": ckpt,
                             "predicted_MB": _mb(pred, c, m), "measured_MB": round(measured / 2**20)})
                print(rows[-1], flush=True)
        adapter = Path(tmp) / "sft_1_False" / "sft" / "adapter"
        for m in micro:
            out = Path(tmp) / f"spin_{m}"
            run(["spin", a.config, *a.overrides, f"train.micro_batch_size={m}",
                 "spin.iterations=1", "spin.keep_best=null", "--adapter", str(adapter),
                 "--output-dir", str(out)])
            res = json.loads((out / "spin" / "iter_1" / "result.json").read_text())
            phases = res["accounting"]["phases"]
            c = pred["costs"]["spin"]["without_checkpointing"]
            rows.append({"phase": "spin train", "micro_batch": m, "checkpointing": False,
                         "predicted_MB": _mb(pred, c, m),
                         "measured_MB": round(phases["train"]["peak_bytes"] / 2**20)})
            print(rows[-1], flush=True)
        g = pred["costs"]["generation"]
        rows.append({"phase": "spin generate", "rows": g["setting"],
                     "predicted_MB": _mb(pred, g, int(g["setting"].split()[0])),
                     "measured_MB": round(phases["generate"]["peak_bytes"] / 2**20)})
        print(rows[-1], flush=True)
    return rows


def finish(a, pred: dict, rows: list[dict], measured_at: str | None) -> None:
    for r in rows:
        r["error_pct"] = round(100 * (r["predicted_MB"] - r["measured_MB"]) / max(r["measured_MB"], 1), 1)
    print("| phase | micro-batch | checkpointing | measured MB | plan MB | error |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['phase']} | {r.get('micro_batch', r.get('rows'))} | "
              f"{r.get('checkpointing', '-')} | {r['measured_MB']} | {r['predicted_MB']} | "
              f"{r['error_pct']:+.1f} % |")
    result = {"benchmark": "memory plan accuracy", "args": vars(a), "environment": environment(),
              "loaded_bytes": pred["loaded_bytes"], "longest_sft_tokens": pred["longest_sft_tokens"],
              "costs": pred["costs"], "rows": rows,
              **({"runs_measured_at_commit": measured_at} if measured_at else {})}
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
