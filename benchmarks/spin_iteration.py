"""Benchmark: one SPIN iteration on N GSM8K prompts of the embedded model; prints JSON.

    python benchmarks/spin_iteration.py --prompts 64                 # spinlora only
    python benchmarks/spin_iteration.py --prompts 16 --trl           # + the TRL pipeline, ratio
    python benchmarks/spin_iteration.py --prompts 16 --side trl      # TRL alone (its peak RSS)

spinlora: batched KV-cache generation grouped by length, one reference pass, the shared training
loop (answer-only logits, dynamic padding). TRL (1.16), written as its users write it: HF
``generate`` in batches of ``--gen-batch-size`` (the same as spinlora's) + ``DPOTrainer`` with
``precompute_ref_log_probs=True`` on a PeftModel that carries Δθ_t (TRL then copies the adapter
to a frozen reference adapter: the right reference), per-device batch ``--trl-batch-size`` (2 on
CPU), and DPOConfig's own defaults, gradient checkpointing on among them (``--gradient-
checkpointing`` turns it on for spinlora too, for a comparison at the same memory policy). Both start from the same adapter (``--adapter``, or a quick SFT) on the same seeded prompts,
with the same max_new_tokens, one epoch over the same pairs, λ and learning rate.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _common import emit  # noqa: E402
from spinlora.accounting import Accountant, environment  # noqa: E402
from spinlora.adapters import attach, load  # noqa: E402
from spinlora.config import RunConfig  # noqa: E402
from spinlora.data import ChatFormat, build_examples, load_rows, subset  # noqa: E402
from spinlora.models import load_model, pick_device  # noqa: E402
from spinlora.stages.sft import sft_objective  # noqa: E402
from spinlora.stages.spin import make_pairs, reference_pass, spin_objective  # noqa: E402
from spinlora.train import MetricsLog, train_loop  # noqa: E402


def model_with_adapter(cfg: RunConfig, adapter: str | None):
    model, tok = load_model(cfg.model)
    model = load(model, adapter) if adapter else attach(model, cfg.adapter)
    return model, tok


def sft_adapter(cfg: RunConfig, args, dest: Path) -> dict:
    """SPIN always starts from an SFT adapter: make Δθ_0 on other GSM8K rows (not timed)."""
    model, tok = model_with_adapter(cfg, None)
    rows = load_rows(cfg.data.train, cfg.data, "train")
    examples, _ = build_examples(subset(rows, args.sft_examples, 1), ChatFormat(tok), cfg.data)
    t0 = time.perf_counter()
    train_loop(model, examples, sft_objective(tok.pad_token_id), cfg.train, 2e-4, 1,
               Accountant(pick_device(cfg.model.device)), MetricsLog(None), 0, "sft")
    model.save_pretrained(dest)
    return {"sft_examples": len(examples), "sft_seconds": round(time.perf_counter() - t0, 1)}


def run_spinlora(cfg: RunConfig, args) -> tuple[dict, list[dict]]:
    model, tok = model_with_adapter(cfg, args.adapter)
    fmt = ChatFormat(tok)
    rows = subset(load_rows(cfg.data.train, cfg.data, "train"), args.prompts, 0)
    examples, _ = build_examples(rows, fmt, cfg.data)
    acct = Accountant(pick_device(cfg.model.device))
    t0 = time.perf_counter()
    pairs, records, counts = make_pairs(model, tok, fmt, examples, cfg, acct, "opponent")
    # the micro-batches the reference pass scored are the ones training runs (as the SPIN stage
    # does): in bf16 a row's log-prob depends on its batch, and step 0 is ln 2 only this way
    units = reference_pass(model, pairs, tok.pad_token_id, acct, cfg.train.micro_batch_size)
    steps = train_loop(model, pairs, spin_objective(tok.pad_token_id, args.beta), cfg.train,
                       args.lr, args.epochs, acct, MetricsLog(None), 0, "spin", units=units)
    total = time.perf_counter() - t0
    s = acct.summary()
    return {"total_seconds": round(total, 2), "step0_loss": steps[0]["loss"],
            "steps": len(steps), "generation": counts,
            "phases": {k: {"seconds": v["seconds"], "tokens": v["tokens"],
                           "tokens_per_s": v["tokens_per_s"],
                           "peak_over_baseline_MB": round(v["peak_over_baseline_bytes"] / 2**20)}
                       for k, v in s["phases"].items()},
            "peak_over_baseline_MB": round(s["peak_over_baseline_bytes"] / 2**20)}, records


def run_trl(cfg: RunConfig, args) -> dict:
    import datasets
    from trl import DPOConfig, DPOTrainer

    model, tok = model_with_adapter(cfg, args.adapter)
    rows = subset(load_rows(cfg.data.train, cfg.data, "train"), args.prompts, 0)
    from spinlora.data import strip_calculator_notes

    t0 = time.perf_counter()
    tok.padding_side = "left"
    gens = []
    model.eval()
    with torch.no_grad():  # HF generate in batches of the same size as spinlora's
        for i in range(0, len(rows), args.gen_batch_size):
            chunk = rows[i:i + args.gen_batch_size]
            texts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}],
                                             tokenize=False, add_generation_prompt=True)
                     for r in chunk]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            gens += tok.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    t_gen = time.perf_counter() - t0
    ds = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "chosen": [{"role": "assistant", "content": strip_calculator_notes(r["answer"])}],
         "rejected": [{"role": "assistant", "content": g}]} for r, g in zip(rows, gens)])
    with tempfile.TemporaryDirectory() as tmp:
        dpo_args = DPOConfig(output_dir=tmp, beta=args.beta, learning_rate=args.lr,
                             per_device_train_batch_size=args.trl_batch_size,
                             num_train_epochs=args.epochs, precompute_ref_log_probs=True,
                             max_length=cfg.data.max_length, use_cpu=not torch.cuda.is_available(),
                             report_to=[], save_strategy="no", logging_steps=1,
                             lr_scheduler_type="linear", disable_tqdm=True)
        t1 = time.perf_counter()
        trainer = DPOTrainer(model=model, args=dpo_args, train_dataset=ds, processing_class=tok)
        t_setup = time.perf_counter() - t1
        t2 = time.perf_counter()
        trainer.train()
        t_train = time.perf_counter() - t2
    total = time.perf_counter() - t0
    first = next((h for h in trainer.state.log_history if "loss" in h), {})
    return {"total_seconds": round(total, 2), "generate_seconds": round(t_gen, 2),
            "setup_seconds (tokenize)": round(t_setup, 2),
            "train_seconds (incl. reference precompute)": round(t_train, 2),
            "first_logged_loss": first.get("loss"),
            "logged_losses_first_steps": [h["loss"] for h in trainer.state.log_history
                                          if "loss" in h][:4]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8, help="training batch (pairs per step)")
    p.add_argument("--gen-batch-size", type=int, default=32)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--adapter", help="start from this adapter (Δθ_t); default: a quick SFT")
    p.add_argument("--sft-examples", type=int, default=64,
                   help="without --adapter: SFT examples for Δθ_0 (0 = start from a fresh LoRA)")
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="spinlora's micro-batch (default: 2 on CPU, where it is fastest and "
                        "leanest; --batch-size on GPU)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="spinlora side: train.gradient_checkpointing=true (TRL's DPOConfig turns "
                        "it on by default)")
    p.add_argument("--model", default="SmolLM2-135M-Instruct")
    p.add_argument("--trl", action="store_true", help="also run the TRL pipeline, print the ratio")
    p.add_argument("--side", choices=["both", "spinlora", "trl"], default="both",
                   help="run one side only (its own process: a clean peak-RSS figure)")
    p.add_argument("--trl-batch-size", type=int, default=None,
                   help="DPOTrainer's per-device batch (default: 2 on CPU, --batch-size on GPU)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    cfg = RunConfig()
    cfg.model.name = args.model
    cfg.data.train = str(ROOT.parent / "shared/data/gsm8k/train.jsonl")
    cfg.data.max_length = args.max_length
    cfg.generation.max_new_tokens = args.max_new_tokens
    cfg.generation.batch_size = args.gen_batch_size
    cfg.train.batch_size = cfg.train.micro_batch_size = args.batch_size
    if args.micro_batch_size is None and not torch.cuda.is_available():
        args.micro_batch_size = 2
    if args.micro_batch_size:
        cfg.train.micro_batch_size = args.micro_batch_size
    cfg.train.log_every = 1000
    cfg.train.gradient_checkpointing = args.gradient_checkpointing
    if args.trl_batch_size is None:
        args.trl_batch_size = args.batch_size if torch.cuda.is_available() else 2
    result = {"benchmark": "one SPIN iteration", "args": vars(args), "environment": environment()}
    tmp = tempfile.TemporaryDirectory()
    if not args.adapter and args.sft_examples > 0:
        result["start_adapter"] = sft_adapter(cfg, args, Path(tmp.name) / "sft")
        args.adapter = str(Path(tmp.name) / "sft")
    if args.side in ("both", "spinlora"):
        result["spinlora"], _ = run_spinlora(cfg, args)
        result["spinlora"]["process_peak_rss_MB"] = peak_rss_mb()
        print(json.dumps({"spinlora": result["spinlora"]}, indent=2), flush=True)
    if args.trl or args.side == "trl":
        result["trl"] = run_trl(cfg, args)
        result["trl"]["process_peak_rss_MB"] = peak_rss_mb()  # after spinlora's in "both"
        if "spinlora" in result:
            result["speedup_vs_trl"] = round(result["trl"]["total_seconds"]
                                             / result["spinlora"]["total_seconds"], 2)
    emit(result, args.out)


def peak_rss_mb() -> int:
    """This process's peak RSS so far, across the phase meters' resets of the kernel's count
    (``accounting.process_peak_rss``; ``ru_maxrss`` alone reads only the peak since the last
    reset). Run one side per process (--side) to compare memory."""
    from spinlora.accounting import process_peak_rss

    return round(process_peak_rss() / 2**20)


if __name__ == "__main__":
    main()
