"""SPIN on the adapter: self-play fine-tuning (Chen et al., ICML 2024, arXiv 2401.01335, Alg. 1).

Iteration t+1 (t = 0 … T-1), with one copy of the base weights θ0 for the whole run:
  1. the opponent θ0 + Δθ_t answers the SFT prompts (same chat template as training);
  2. the reference log-probs log p_θt(y|x), log p_θt(y'|x) are computed once, in inference mode,
     with the very adapter the player starts from: the reference is exactly θ0 + Δθ_t, never the
     bare base model, and needs no second model nor a copy of the adapter;
  3. the player (the same adapter, trained in place) minimises
     ℓ(λ·[log p_θ(y|x)/p_θt(y|x) − log p_θ(y'|x)/p_θt(y'|x)]), ℓ(z) = log(1 + e^-z);
  4. Δθ_{t+1}, the generations and the metrics are saved in ``RUN/spin/iter_{t+1}``.
At the first step of every iteration player = opponent, so the loss is ln 2 and the margin 0;
the result file records that check. Held-out diagnostics pick the best iteration (``keep_best``).
"""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import adapters
from ..accounting import Accountant, count_parameters
from ..config import RunConfig
from ..data import Example, collate, subset
from ..evaluate import evaluate_gsm8k
from ..generate import generate
from ..losses import LN2, answer_logps, score_sequences, shared_prompt_logps, spin_loss
from ..train import MetricsLog, Objective, train_loop


@dataclass
class Pair:
    """A prompt with its gold answer y and the opponent's answer y' (token ids)."""

    prompt_ids: list[int]
    real_ids: list[int]
    gen_ids: list[int]
    ref_real: float = 0.0  # log p_θt(y|x), set by the reference pass
    ref_gen: float = 0.0  # log p_θt(y'|x)


def spin_objective(pad_id: int, beta: float) -> Objective:
    """SPIN loss summed over pairs (real and generated sequences in one padded forward pass)."""

    def loss(model, pairs: list[Pair]):
        device = next(model.parameters()).device
        both = shared_prompt_logps(model, [p.prompt_ids for p in pairs],
                                   [[p.real_ids, p.gen_ids] for p in pairs], pad_id)
        if both is not None:  # the prompt runs once for y and y'
            real, gen = both[:, 0], both[:, 1]
        else:  # two passes, each padded to its own longest sequence
            real, _ = answer_logps(model, collate([(p.prompt_ids, p.real_ids) for p in pairs],
                                                  pad_id).to(device))
            gen, _ = answer_logps(model, collate([(p.prompt_ids, p.gen_ids) for p in pairs],
                                                 pad_id).to(device))
        ref_real = torch.tensor([p.ref_real for p in pairs], device=device, dtype=real.dtype)
        ref_gen = torch.tensor([p.ref_gen for p in pairs], device=device, dtype=real.dtype)
        losses, margins = spin_loss(real, gen, ref_real, ref_gen, beta)
        d = margins.detach()
        metrics = {"margin": d.sum(), "disc_accuracy": (d > 0).float().sum(),
                   "logp_real": real.detach().sum(), "logp_gen": gen.detach().sum(),
                   "reward_real": (beta * (real.detach() - ref_real)).sum(),
                   "reward_gen": (beta * (gen.detach() - ref_gen)).sum()}
        return losses.sum(), metrics

    return Objective(loss=loss, weight=lambda pairs: float(len(pairs)),
                     # tokens of a pair: its prompt once (shared by y and y') and both answers
                     tokens=lambda pairs: sum(len(p.prompt_ids) + len(p.real_ids)
                                              + len(p.gen_ids) for p in pairs),
                     length=lambda p: len(p.prompt_ids) + max(len(p.real_ids), len(p.gen_ids)))


def make_pairs(model, tokenizer, fmt, examples: list[Example], cfg: RunConfig,
               acct: Accountant, desc: str) -> tuple[list[Pair], list[dict], dict]:
    """The opponent (the model as it is) answers the prompts; returns pairs, records, counts."""
    with acct.phase("generate") as ph:
        gens, produced = generate(model, tokenizer, [e.prompt_ids for e in examples],
                                  cfg.generation, fmt.stop_ids, desc=desc)
        ph.tokens += produced
    pairs, records = [], []
    counts = {"generated": len(gens), "unfinished": 0, "cut_to_max_length": 0,
              "dropped_unfinished": 0}
    for e, g in zip(examples, gens):
        ids = list(g.ids)
        if not g.finished:
            # a cut answer keeps no end token: appending one would let length give it away
            counts["unfinished"] += 1
            if cfg.spin.drop_truncated:
                counts["dropped_unfinished"] += 1
                continue
        room = cfg.data.max_length - len(e.prompt_ids)
        if len(ids) > room:
            ids = ids[:room]
            counts["cut_to_max_length"] += 1
        pairs.append(Pair(e.prompt_ids, e.answer_ids, ids))
        records.append({"prompt": e.prompt, "gold": e.answer, "generated": g.text,
                        "finished": g.finished, "generated_tokens": len(g.ids)})
    return pairs, records, counts


def reference_pass(model, pairs: list[Pair], pad_id: int, acct: Accountant,
                   batch_size: int = 8) -> None:
    """Fill ref_real / ref_gen with log p_θt under the current adapter (θ0 + Δθ_t), once."""
    with acct.phase("reference") as ph, torch.inference_mode():
        was_training = model.training
        model.eval()
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i].prompt_ids)
                       + max(len(pairs[i].real_ids), len(pairs[i].gen_ids)))
        for start in range(0, len(order), batch_size):
            chunk = [pairs[i] for i in order[start:start + batch_size]]
            both = shared_prompt_logps(model, [p.prompt_ids for p in chunk],
                                       [[p.real_ids, p.gen_ids] for p in chunk], pad_id)
            if both is None:
                seqs = [(p.prompt_ids, p.real_ids) for p in chunk] + [
                    (p.prompt_ids, p.gen_ids) for p in chunk]
                lps, _ = score_sequences(model, seqs, pad_id)
                both = torch.tensor(lps).view(2, -1).T
            for p, (r, g) in zip(chunk, both.tolist()):
                p.ref_real, p.ref_gen = r, g
        ph.tokens += sum(len(p.prompt_ids) + len(p.real_ids) + len(p.gen_ids) for p in pairs)
        if was_training:
            model.train()


def _heldout(model, tokenizer, fmt, heldout: list[Example], cfg: RunConfig, acct, label) -> dict:
    if not heldout:
        return {}
    r = evaluate_gsm8k(model, tokenizer, fmt, heldout, cfg.generation, acct, label)
    r.pop("samples")
    return r


def run_spin(cfg: RunConfig, model, tokenizer, fmt, sft_examples: list[Example],
             heldout: list[Example], out: Path, new_accountant, finish_dir,
             init_path: Path | None = None) -> dict:
    """Run ``cfg.spin.iterations`` iterations on the adapter of ``model`` (trained in place).

    ``new_accountant()`` gives a fresh Accountant per iteration; ``finish_dir(partial, final)``
    moves a completed iteration folder into place atomically.
    """
    prompts = subset(sft_examples, cfg.spin.prompts, cfg.data.seed)
    pad = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    acct0 = new_accountant()
    start = _heldout(model, tokenizer, fmt, heldout, cfg, acct0, "iter_0")
    history = [{"iteration": 0, "heldout": start}]
    previous: list[Pair] = []
    for t in range(cfg.spin.iterations):
        name = f"iter_{t + 1}"
        part = out / f"{name}.partial"
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        acct = new_accountant()
        beta, lr = cfg.spin.per_iteration("beta", t), cfg.spin.per_iteration("lr", t)
        pairs, gen_records, counts = make_pairs(model, tokenizer, fmt, prompts, cfg, acct,
                                                f"opponent {name}")
        with open(part / "generations.jsonl", "w") as f:
            for r in gen_records:
                f.write(json.dumps(r) + "\n")
        train_pairs = pairs + (previous if cfg.spin.mix_previous else [])
        if not train_pairs:
            raise RuntimeError(f"SPIN {name}: no pairs left to train on (all generations were "
                               "unfinished and spin.drop_truncated is true); raise "
                               "generation.max_new_tokens")
        reference_pass(model, train_pairs, pad, acct)
        log = MetricsLog(part / "metrics.jsonl")
        try:
            records = train_loop(model, train_pairs, spin_objective(pad, beta), cfg.train, lr,
                                 cfg.spin.epochs, acct, log, cfg.seed + t + 1, f"spin {name}",
                                 extra={"iteration": t + 1, "beta": beta},
                                 method=cfg.adapter.method)
        finally:
            log.close()
        finish = adapters.get(cfg.adapter.method).finish
        selection = finish(model, cfg.adapter) if finish else None
        with acct.phase("save"):
            adapters.save(model, cfg.adapter, part / "adapter", init_path)
        held = _heldout(model, tokenizer, fmt, heldout, cfg, acct, name)
        step0 = records[0]["loss"]
        result = {
            "stage": "spin", "iteration": t + 1, "beta": beta, "lr": lr,
            "pairs": len(train_pairs), "new_pairs": len(pairs),
            "mixed_previous": len(train_pairs) - len(pairs), "generation": counts,
            "sampling": {"do_sample": cfg.generation.do_sample,
                         "temperature": cfg.generation.temperature, "top_p": cfg.generation.top_p,
                         "max_new_tokens": cfg.generation.max_new_tokens,
                         "seed": cfg.generation.seed},
            "steps": len(records), "step0_loss": step0,
            # player = opponent at step 0, so the loss must be ln 2 (exact up to float error
            # from different padding; dropout > 0 makes it approximate)
            "step0_is_ln2": abs(step0 - LN2) < 1e-3, "loss_last": records[-1]["loss"],
            "margin_last": records[-1]["margin"], "disc_accuracy_last": records[-1]["disc_accuracy"],
            "heldout": held, "parameters": count_parameters(model), "method": cfg.adapter.method,
            **({"selection": selection} if selection else {}),
            "accounting": acct.summary(),
        }
        if not result["step0_is_ln2"] and cfg.adapter.dropout == 0:
            print(f"[spinlora] WARNING: SPIN {name} step-0 loss {step0:.6f} != ln 2: the "
                  "reference is not the opponent")
        (part / "result.json").write_text(json.dumps(result, indent=2))
        finish_dir(part, out / name)
        history.append({"iteration": t + 1, "heldout": held})
        previous = pairs
    best = _pick_best(history, cfg.spin.keep_best)
    summary = {"stage": "spin", "iterations": cfg.spin.iterations, "keep_best": cfg.spin.keep_best,
               "best_iteration": best, "history": history, "start_accounting": acct0.summary()}
    if best is not None and best > 0:
        dest = out / "best_adapter"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(out / f"iter_{best}" / "adapter", dest)
    return summary


def _pick_best(history: list[dict], metric: str | None) -> int | None:
    """Iteration with the best held-out metric (0 = the starting adapter, i.e. SPIN did not help)."""
    if metric is None or not history[0]["heldout"]:
        return None
    key = {"heldout_gold_logp": "gold_logp_per_token", "heldout_win_rate": "win_rate_gold_vs_own"}[metric]
    scores = [(h["heldout"].get(key, -math.inf), -h["iteration"]) for h in history]
    return -max(scores)[1]
