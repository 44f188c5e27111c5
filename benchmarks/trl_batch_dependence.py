"""Why TRL's first DPO loss is not ln 2 in benchmarks/spin_iteration.py: its log-probs depend on
the batch. Prints JSON.

    python benchmarks/trl_batch_dependence.py --adapter DIR --out result.json

The TRL side of spin_iteration.py up to the trainer (the same seeded 16 prompts, HF generate,
DPOTrainer with precompute_ref_log_probs, batch 2), then, per example: the reference log-probs
TRL stored (computed in batches of 2), the same computed by TRL alone in a batch of 1, and the
sum of log-softmax of the model's plain logits over the completion tokens (batch of 1 and in the
stored batch of 2). A causal model's log-prob of a right-padded sequence does not depend on its
batch; where TRL's does, its step-0 loss (policy in shuffled training batches against a
reference taken in other batches) cannot be ln 2.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import emit  # noqa: E402
from spin_iteration import model_with_adapter  # noqa: E402
from spinlora.accounting import environment  # noqa: E402
from spinlora.config import RunConfig  # noqa: E402
from spinlora.data import load_rows, strip_calculator_notes, subset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--out")
    args = ap.parse_args()
    import datasets
    from trl import DPOConfig, DPOTrainer

    cfg = RunConfig()
    cfg.data.train = str(ROOT.parent / "shared/data/gsm8k/train.jsonl")
    model, tok = model_with_adapter(cfg, args.adapter)
    rows = subset(load_rows(cfg.data.train, cfg.data, "train"), args.prompts, 0)
    tok.padding_side = "left"
    model.eval()
    texts = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], tokenize=False,
                                     add_generation_prompt=True) for r in rows]
    with torch.no_grad():
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=args.max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    gens = tok.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    ds = datasets.Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "chosen": [{"role": "assistant", "content": strip_calculator_notes(r["answer"])}],
         "rejected": [{"role": "assistant", "content": g}]} for r, g in zip(rows, gens)])
    dpo_args = DPOConfig(output_dir=tempfile.mkdtemp(), beta=0.1, per_device_train_batch_size=2,
                         precompute_ref_log_probs=True, max_length=512, use_cpu=True,
                         report_to=[], save_strategy="no", disable_tqdm=True)
    trainer = DPOTrainer(model=model, args=dpo_args, train_dataset=ds, processing_class=tok)
    data, coll, m = trainer.train_dataset, trainer.data_collator, trainer.model

    def plain(idx):  # summed log-softmax of the plain logits over completion tokens
        b = coll([data[i] for i in idx])
        with torch.no_grad():
            logits = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        lp = torch.log_softmax(logits[:, :-1].float(), -1).gather(
            -1, b["input_ids"][:, 1:, None])[..., 0]
        return (lp * b["completion_mask"][:, 1:]).sum(1).tolist()

    per_example = []
    for i in range(len(data)):
        with torch.no_grad():
            c1, r1 = trainer.compute_ref_log_probs(m, coll([data[i]]))
        batch = [i - i % 2, i - i % 2 + 1] if i - i % 2 + 1 < len(data) else [i]
        in_batch = plain(batch)
        k = batch.index(i)
        per_example.append({
            "example": i, "trl_stored_batch_of_2": [data[i]["ref_chosen_logps"],
                                                    data[i]["ref_rejected_logps"]],
            "trl_batch_of_1": [float(c1), float(r1)], "plain_batch_of_1": plain([i]),
            "plain_batch_of_2": [in_batch[k], in_batch[len(batch) + k]]})
    diff = lambda a, b: max(abs(x - y) for x, y in zip(a, b))  # noqa: E731
    result = {"benchmark": "TRL DPO log-probs against their batch", "args": vars(args),
              "environment": environment(),
              "max_abs_diff_trl_batch2_vs_batch1": max(
                  diff(e["trl_stored_batch_of_2"], e["trl_batch_of_1"]) for e in per_example),
              "max_abs_diff_plain_batch2_vs_batch1": max(
                  diff(e["plain_batch_of_2"], e["plain_batch_of_1"]) for e in per_example),
              "max_abs_diff_trl_vs_plain_batch1": max(
                  diff(e["trl_batch_of_1"], e["plain_batch_of_1"]) for e in per_example),
              "examples": per_example}
    emit(result, args.out)


if __name__ == "__main__":
    main()
