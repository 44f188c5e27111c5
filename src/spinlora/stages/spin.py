"""SPIN on the adapter: self-play fine-tuning (Chen et al., ICML 2024, arXiv 2401.01335, Alg. 1).

Iteration t+1 (t = 0 … T-1), with one copy of the base weights θ0 for the whole run:
  1. the opponent θ0 + Δθ_t answers the SFT prompts (same chat template as training);
  2. the reference log-probs log p_θt(y|x), log p_θt(y'|x) are computed once, in inference mode,
     with the very adapter the player starts from: the reference is exactly θ0 + Δθ_t, never the
     bare base model, and needs no second model nor a copy of the adapter (``spin.reference:
     start``: the adapter the stage started from, θ0 + Δθ_0, in every iteration instead, its
     tensors swapped in for the pass from one snapshot);
  3. the player (the same adapter, trained in place) minimises
     ℓ(λ·[log p_θ(y|x)/p_θt(y|x) − log p_θ(y'|x)/p_θt(y'|x)]), ℓ(z) = log(1 + e^-z);
  4. Δθ_{t+1}, the generations and the metrics are saved in ``RUN/spin/iter_{t+1}``.
At the first step of every iteration player = opponent, so the loss is ln 2 and the margin 0;
the result file records that check (not made after iteration 1 where the reference is the
start). Held-out diagnostics pick the best iteration (``keep_best``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import adapters, dist, rundir, svamp
from ..accounting import Accountant, count_parameters
from ..config import (DpoConfig, GenerationConfig, RunConfig, SpinConfig,
                      own_micro_batch)
from ..data import Example, prompt_pool, subset
from ..evaluate import evaluate_gsm8k
from ..evaluate.gsm8k import extract_answer, extract_strict
from ..generate import generate
from ..losses import spin_loss, step0_value
from ..scoring import score_answers
from ..train import MetricsLog, Objective, length_units, train_loop


@dataclass
class Pair:
    """A prompt with the preferred answer y and the other one y' (token ids). SPIN: y is the
    gold answer, y' the opponent's; DPO (stages/dpo.py): chosen and rejected from data."""

    prompt_ids: list[int]
    real_ids: list[int]
    gen_ids: list[int]
    ref_real: float = 0.0  # log p_θt(y|x), set by the reference pass
    ref_gen: float = 0.0  # log p_θt(y'|x)
    # spin.pair_tokens=divergence: the preference sums the first ``cut`` tokens of y and y' (up to
    # and including the first that differs; ref_real / ref_gen are theirs) and ref_whole is
    # log p_θt(y|x) of the whole gold answer. 0: whole answers
    cut: int = 0
    ref_whole: float = 0.0

    def scored(self) -> list[list[int]]:
        """The answers one pass scores: [y, y'], or [y, y[:cut], y'[:cut]] with a cut."""
        if not self.cut:
            return [self.real_ids, self.gen_ids]
        return [self.real_ids, self.real_ids[:self.cut], self.gen_ids[:self.cut]]

    def tokens(self) -> int:
        """Tokens one pass scores: the prompt once (shared by its answers) and ``scored()``."""
        return len(self.prompt_ids) + sum(map(len, self.scored()))


def cut_at_divergence(pairs: list[Pair]) -> float:
    """``spin.pair_tokens: divergence``: set every pair's cut (a pair with no differing token
    keeps whole answers); returns the mean cut, in tokens."""
    for p in pairs:
        p.cut = divergence(p.real_ids, p.gen_ids) or max(len(p.real_ids), len(p.gen_ids))
    return round(sum(p.cut for p in pairs) / max(1, len(pairs)), 2)


def divergence(a: list[int], b: list[int]) -> int:
    """Tokens up to and including the first where ``a`` and ``b`` differ (0 when one is a prefix
    of the other: no single token tells them apart)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i + 1
    return 0


def spin_objective(pad_id: int, beta: float, spin_cfg: SpinConfig | DpoConfig | None = None
                   ) -> Objective:
    """The preference loss summed over pairs (y and y' share one pass of their prompt): SPIN's,
    and DPO's with pairs from data.

    ``spin_cfg`` (the ``spin`` or ``dpo`` section) picks the loss variant (``losses.spin_loss``);
    None is the paper's sigmoid loss.
    """
    spin_cfg = spin_cfg or SpinConfig(loss="sigmoid")

    def loss(model, pairs: list[Pair]):
        device = next(model.parameters()).device
        # y and y' of a pair share one pass of their prompt where the decoder runs alone
        scored = [p.scored() for p in pairs]
        per = len(scored[0])  # 2, or 3 with spin.pair_tokens=divergence (every pair has a cut)
        out, _, _ = score_answers(model, [p.prompt_ids for p in pairs], scored, pad_id)
        out = out.view(-1, per)
        real, gen = out[:, -2], out[:, -1]
        as_tensor = lambda xs: torch.tensor(xs, device=device, dtype=real.dtype)  # noqa: E731
        ref_real, ref_gen = as_tensor([p.ref_real for p in pairs]), as_tensor([p.ref_gen for p in pairs])
        whole = dict(whole_real=out[:, 0], whole_ref=as_tensor([p.ref_whole for p in pairs])
                     ) if per == 3 else {}
        real_len = as_tensor([len(p.real_ids) for p in pairs])
        losses, margins, pref = spin_loss(real, gen, ref_real, ref_gen, beta, spin_cfg.loss,
                                          real_len=real_len,
                                          gen_len=as_tensor([len(p.gen_ids) for p in pairs]),
                                          nll_weight=spin_cfg.nll_weight,
                                          dpop_lambda=spin_cfg.dpop_lambda, **whole)
        d, whole_real = margins.detach(), out[:, 0].detach()  # the whole gold answer
        real = real.detach()
        metrics = {"margin": d.sum(), "disc_accuracy": (d > 0).float().sum(),
                   "pref_loss": pref.detach().sum(),
                   "logp_real": whole_real.sum(), "logp_gen": gen.detach().sum(),
                   "nll_real_per_token": (-whole_real / real_len).sum(),
                   "reward_real": (beta * (real - ref_real)).sum(),
                   "reward_gen": (beta * (gen.detach() - ref_gen)).sum()}
        return losses.sum(), metrics

    return Objective(loss=loss, weight=lambda pairs: float(len(pairs)),
                     tokens=lambda pairs: sum(p.tokens() for p in pairs),
                     length=lambda p: len(p.prompt_ids) + max(len(p.real_ids), len(p.gen_ids)),
                     metric_keys=("margin", "disc_accuracy", "pref_loss", "logp_real", "logp_gen",
                                  "nll_real_per_token", "reward_real", "reward_gen"))


def opponent_generation(cfg: RunConfig, t: int) -> GenerationConfig:
    """The opponent's sampling settings for iteration ``t`` (0-based): ``spin.opponent``, with the
    length and batch size of ``generation``. Evaluation keeps ``generation`` (greedy)."""
    opp = cfg.spin.opponent
    return dataclasses.replace(cfg.generation, do_sample=opp.temperature > 0,
                               temperature=opp.temperature or 1.0, top_p=opp.top_p,
                               seed=opp.seed + 1000 * t)


def is_correct(generated: str, gold_answer: str, check: str = "final") -> bool | None:
    """Whether a generated answer is right; None (not checkable, the pair is kept) unless the
    gold answer states its number as GSM8K does (``#### N``): on free-form data a shared last
    number says nothing about correctness.

    ``check`` (``data.answer_check``, resolved by ``answer_check``): ``final``, the answer's
    final number equals the gold one; ``equation``, the value of the last equation it writes
    does (``svamp.score``, the SVAMP paper's score: its stated number where it writes none)."""
    gold = extract_strict(gold_answer)
    if gold is None:
        return None
    if check == "equation":
        return svamp.score(generated, float(gold))["correct"]
    return extract_answer(generated) == gold


def answer_check(cfg: RunConfig, example: Example) -> str:
    """``data.answer_check`` for one row: ``auto`` is ``equation`` on SVAMP rows (they carry a
    gold ``value``), ``final`` elsewhere."""
    check = cfg.data.answer_check
    if check == "auto":
        return "equation" if "value" in example.meta else "final"
    return check


def stated_right(generated: str, gold_answer: str) -> bool:
    """The final number is right too (used to prefer, among right samples, one whose arithmetic
    is also right: an equation-checked answer may state a wrong sum)."""
    return bool(is_correct(generated, gold_answer, "final"))


def make_pairs(model, tokenizer, fmt, examples: list[Example], cfg: RunConfig,
               acct: Accountant, desc: str, t: int = 0) -> tuple[list[Pair], list[dict], dict]:
    """The opponent (the model as it is) answers the prompts; returns pairs, records, counts.

    With ``spin.opponent.samples`` k > 1 each prompt gets k sampled answers and one is chosen;
    with ``spin.correct_pairs: drop`` a pair whose chosen answer is already correct is dropped.
    With ``spin.chosen: own_correct`` the preferred answer is not the gold one but one of the k
    samples whose final number is right (finished with an end token), and the other answer one
    that is wrong: prompts without both are skipped (``no_right_sample`` / ``no_wrong_sample``).
    """
    k = cfg.spin.opponent.samples
    with acct.phase("generate") as ph:  # k answers per prompt, prompt i's at i*k .. i*k+k-1
        gens, produced = generate(model, tokenizer,
                                  [e.prompt_ids for e in examples for _ in range(k)],
                                  opponent_generation(cfg, t), fmt.stop_ids, desc=desc)
        ph.tokens += produced
    if cfg.spin.chosen == "own_correct":
        return _own_pairs(gens, examples, cfg)
    drop_correct = cfg.spin.correct_pairs == "drop"
    pairs, records = [], []
    counts = {"prompts": len(examples), "generated": len(gens), "unfinished": 0,
              "cut_to_max_length": 0, "dropped_unfinished": 0, "opponent_correct": 0,
              "checkable": 0, "dropped_correct": 0}
    for i, e in enumerate(examples):
        samples = gens[i * k:(i + 1) * k]
        flags = [is_correct(g.text, e.answer, answer_check(cfg, e)) for g in samples]
        counts["unfinished"] += sum(not g.finished for g in samples)
        if flags[0] is not None:
            counts["checkable"] += 1
            counts["opponent_correct"] += bool(flags[0])  # the first (greedy: the only) answer
        # the chosen answer: a wrong one when wrong ones are wanted, finished before cut
        order = sorted(range(k), key=lambda j: (drop_correct and flags[j] is True,
                                                not samples[j].finished))
        g, correct = samples[order[0]], flags[order[0]]
        if drop_correct and correct:
            counts["dropped_correct"] += 1
            continue
        ids = list(g.ids)
        if not g.finished:
            # a cut answer keeps no end token: appending one would let length give it away
            if cfg.spin.drop_truncated:
                counts["dropped_unfinished"] += 1
                continue
        room = cfg.data.max_length - len(e.prompt_ids)
        if len(ids) > room:
            ids = ids[:room]
            counts["cut_to_max_length"] += 1
        pairs.append(Pair(e.prompt_ids, e.answer_ids, ids))
        records.append({"prompt": e.prompt, "gold": e.answer, "generated": g.text,
                        "finished": g.finished, "correct": correct,
                        "generated_tokens": len(g.ids), "prompt_index": i, "gen_ids": ids})
    counts["pairs"] = len(pairs)
    return pairs, records, counts


def _own_pairs(gens: list, examples: list[Example], cfg: RunConfig
               ) -> tuple[list[Pair], list[dict], dict]:
    """``spin.chosen: own_correct``: right ≻ wrong among the opponent's own k samples."""
    k = cfg.spin.opponent.samples
    pairs, records = [], []
    counts = {"prompts": len(examples), "generated": len(gens),
              "unfinished": sum(not g.finished for g in gens), "checkable": 0,
              "samples_correct": 0, "no_right_sample": 0, "no_wrong_sample": 0,
              "dropped_unfinished": 0, "cut_to_max_length": 0}
    for i, e in enumerate(examples):
        samples = gens[i * k:(i + 1) * k]
        flags = [is_correct(g.text, e.answer, answer_check(cfg, e)) for g in samples]
        if flags[0] is None:
            continue  # not checkable: no right or wrong to tell apart
        counts["checkable"] += 1
        counts["samples_correct"] += sum(bool(f) for f in flags)
        # a right answer whose stated number is right too comes first (stable: else the first)
        right = sorted((g for g, f in zip(samples, flags) if f and g.finished),
                       key=lambda g: not stated_right(g.text, e.answer))
        # a wrong answer that finished first: a cut one would let length give it away
        wrong = sorted((g for g, f in zip(samples, flags) if not f), key=lambda g: not g.finished)
        if not right:
            counts["no_right_sample"] += 1
            continue
        if not wrong:
            counts["no_wrong_sample"] += 1
            continue
        if not wrong[0].finished and cfg.spin.drop_truncated:
            counts["dropped_unfinished"] += 1
            continue
        room = cfg.data.max_length - len(e.prompt_ids)
        chosen, rejected = list(right[0].ids), list(wrong[0].ids)
        if len(chosen) > room or len(rejected) > room:
            counts["cut_to_max_length"] += 1
        pairs.append(Pair(e.prompt_ids, chosen[:room], rejected[:room]))
        records.append({"prompt": e.prompt, "gold": e.answer, "chosen": right[0].text,
                        "generated": wrong[0].text, "finished": wrong[0].finished,
                        "correct": False, "generated_tokens": len(wrong[0].ids),
                        "prompt_index": i, "gen_ids": rejected[:room],
                        "chosen_ids": chosen[:room]})
    counts["pairs"] = len(pairs)
    return pairs, records, counts


def reference_pass(model, pairs: list[Pair], pad_id: int, acct: Accountant,
                   batch_size: int = 8, state: dict | None = None) -> list[list[int]]:
    """Fill ref_real / ref_gen with log p_θt under the current adapter (θ0 + Δθ_t), once; with
    ``state`` (an ``adapters.snapshot``; ``spin.reference: start``) under that adapter instead,
    swapped in for the pass and put back.

    Returns the micro-batches it scored (indices into ``pairs``, grouped by length): pass them to
    ``train_loop(units=...)`` and every pair is trained beside the same companions, so the
    training pass computes exactly what the reference pass computed (bf16 included)."""
    units = length_units([len(p.prompt_ids) + max(len(p.real_ids), len(p.gen_ids))
                          for p in pairs], batch_size)
    swap = (adapters.adapter_state(model, state) if state is not None
            and not adapters.at_state(model, state) else contextlib.nullcontext())
    with acct.phase("reference") as ph, torch.inference_mode(), swap:
        was_training = model.training
        model.eval()
        done = {}
        for b, idx in enumerate(units):
            if not dist.mine(b):  # several processes: batch b is process b mod world's
                continue
            chunk = [pairs[i] for i in idx]
            scored = [p.scored() for p in chunk]
            out, _, _ = score_answers(model, [p.prompt_ids for p in chunk], scored, pad_id)
            done.update(zip(idx, out.view(-1, len(scored[0])).tolist()))
        for p, logps in zip(pairs, dist.gather(done, len(pairs))):
            p.ref_whole, p.ref_real, p.ref_gen = logps[0], logps[-2], logps[-1]
        ph.tokens += sum(p.tokens() for p in pairs)
        if was_training:
            model.train()
    return units


def _heldout(model, tokenizer, fmt, heldout: list[Example], cfg: RunConfig, acct, label,
             reranker=None) -> dict:
    """Greedy GSM8K figures on the held-out training rows; with ``reranker`` (reward model, its
    ChatFormat) also the mean reward of the model's own answers (``reward_mean``)."""
    if not heldout:
        return {}
    r = evaluate_gsm8k(model, tokenizer, fmt, heldout, cfg.generation, acct, label)
    samples = r.pop("samples")
    if reranker is not None:
        from ..reward_model import score_texts

        scores = score_texts(reranker[0], reranker[1], [e.prompt for e in heldout],
                             [s["output"] for s in samples])
        r["reward_mean"] = sum(scores) / len(scores)
    return r


def run_spin(cfg: RunConfig, model, tokenizer, fmt, sft_examples: list[Example],
             heldout: list[Example], out: Path, new_accountant,
             init_path: Path | None = None) -> dict:
    """Run ``cfg.spin.iterations`` iterations on the adapter of ``model`` (trained in place).

    ``new_accountant()`` gives a fresh Accountant per iteration. Each iteration is built in
    ``iter_t.partial`` and takes its final name when complete (``rundir``).
    """
    prompts = subset(prompt_pool(sft_examples, cfg.spin.prompt_rows, "spin.prompt_rows"),
                     cfg.spin.prompts, cfg.data.seed)
    pad = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    reranker = None
    if cfg.spin.reward_model:  # keep_best=heldout_reward: the reward model, loaded once
        from ..reward_model import load_reranker

        reranker = load_reranker(cfg.spin.reward_model, cfg)
    # spin.reference=start: the adapter the stage starts from, before any --resume loads a
    # finished iteration's
    anchor = adapters.snapshot(model) if cfg.spin.reference == "start" else None
    acct0 = new_accountant()
    start_file = out / "start.json"
    if cfg.resume and start_file.is_file():
        start = json.loads(start_file.read_text())
    else:
        start = _heldout(model, tokenizer, fmt, heldout, cfg, acct0, "iter_0", reranker)
        rundir.write_json(start_file, start)
    history = [{"iteration": 0, "heldout": start}]
    previous: list[Pair] = []
    stopped_early = None
    # --resume: iterations 1..k finished earlier are reused (adapter, held-out figures, pairs for
    # mix_previous); per-iteration λ / lr and every seed depend on t alone, so iteration k+1 runs
    # exactly as it would have
    k = 0
    while cfg.resume and rundir.finished(out / f"iter_{k + 1}") and k < cfg.spin.iterations:
        k += 1
        r = json.loads((out / f"iter_{k}" / "result.json").read_text())
        history.append({"iteration": k, "heldout": r["heldout"]})
        if _fell(history, cfg.spin):
            stopped_early = k
            break
    if k:
        adapters.load_weights(model, cfg.adapter, out / f"iter_{k}" / "adapter")
        with open(out / f"iter_{k}" / "generations.jsonl") as f:
            recs = [json.loads(line) for line in f]
        previous = [Pair(prompts[r["prompt_index"]].prompt_ids,
                         r.get("chosen_ids") or prompts[r["prompt_index"]].answer_ids,
                         r["gen_ids"]) for r in recs]
        print(f"[spinlora] resume: SPIN iterations 1..{k} finished earlier, reused")
    tcfg = own_micro_batch(cfg.train, cfg.spin.micro_batch_size)  # SPIN's pairs a pass
    for t in range(k, cfg.spin.iterations if stopped_early is None else k):
        name = f"iter_{t + 1}"
        part = rundir.begin(out / name)
        acct = new_accountant()
        beta, lr = cfg.spin.per_iteration("beta", t), cfg.spin.per_iteration("lr", t)
        pairs, gen_records, counts = make_pairs(model, tokenizer, fmt, prompts, cfg, acct,
                                                f"opponent {name}", t)
        if dist.is_main():
            with open(part / "generations.jsonl", "w") as f:
                for r in gen_records:
                    f.write(json.dumps(r) + "\n")
        train_pairs = pairs + (previous if cfg.spin.mix_previous else [])
        if cfg.spin.pair_tokens == "divergence":
            counts["divergence_token_mean"] = cut_at_divergence(train_pairs)
        if not train_pairs:
            skipped = ", ".join(f"{k2} {v}" for k2, v in counts.items()
                                if k2.startswith(("dropped", "no_")) and v)
            raise RuntimeError(
                f"SPIN {name}: no pairs left to train on ({skipped or 'no prompts'}); use more "
                "spin.prompts, spin.correct_pairs=keep, spin.drop_truncated=false, or (with "
                "spin.chosen=own_correct) more spin.opponent.samples")
        units = reference_pass(model, train_pairs, pad, acct, tcfg.micro_batch_size, anchor)
        log = MetricsLog(part / "metrics.jsonl", cfg.train.report_to, f"spin/{name}")
        try:
            records = train_loop(model, train_pairs, spin_objective(pad, beta, cfg.spin), tcfg,
                                 lr, cfg.spin.epochs, acct, log, cfg.seed + t + 1, f"spin {name}",
                                 extra={"iteration": t + 1, "beta": beta},
                                 method=cfg.adapter.method, units=units)
        finally:
            log.close()
        finish = adapters.get(cfg.adapter.method).finish
        selection = finish(model, cfg.adapter) if finish else None
        with acct.phase("save"):
            adapters.save(model, cfg.adapter, part / "adapter", init_path)
        held = _heldout(model, tokenizer, fmt, heldout, cfg, acct, name, reranker)
        # player = opponent at step 0, so the preference part of the loss is ln 2 (sigmoid family)
        # or 1/(4β²) (IPO), exact: the same micro-batches as the reference pass (bf16 too);
        # dropout > 0 makes it approximate
        # (spin.reference=start from iteration 2 on: the player is not its reference, no check)
        step0, expected = records[0]["pref_loss"], step0_value(cfg.spin.loss, beta)
        checked = anchor is None or t == 0
        result = {
            "stage": "spin", "iteration": t + 1, "beta": beta, "lr": lr, "loss": cfg.spin.loss,
            **({"nll_weight": cfg.spin.nll_weight} if cfg.spin.loss == "sigmoid_nll" else {}),
            **({"dpop_lambda": cfg.spin.dpop_lambda} if cfg.spin.loss == "dpop" else {}),
            "correct_pairs": cfg.spin.correct_pairs, "chosen": cfg.spin.chosen,
            "reference": cfg.spin.reference,
            "pair_tokens": cfg.spin.pair_tokens,
            "pairs": len(train_pairs), "new_pairs": len(pairs),
            "mixed_previous": len(train_pairs) - len(pairs), "generation": counts,
            "opponent_sampling": {**dataclasses.asdict(cfg.spin.opponent),
                                  "seed": opponent_generation(cfg, t).seed,
                                  "max_new_tokens": cfg.generation.max_new_tokens},
            "steps": len(records), "step0_loss": records[0]["loss"],
            "step0_pref_loss": step0, "step0_expected": expected,
            "step0_ok": (abs(step0 - expected) < 1e-3 * max(1.0, expected)) if checked else None,
            "loss_last": records[-1]["loss"],
            "margin_last": records[-1]["margin"], "disc_accuracy_last": records[-1]["disc_accuracy"],
            "heldout": held, "parameters": count_parameters(model), "method": cfg.adapter.method,
            **({"selection": selection} if selection else {}),
            "accounting": acct.summary(),
        }
        if result["step0_ok"] is False and cfg.adapter.dropout == 0:
            print(f"[spinlora] WARNING: SPIN {name} step-0 loss {step0:.6f} != {expected:.6f}: "
                  "the reference is not the opponent")
        rundir.finish(part, result)
        history.append({"iteration": t + 1, "heldout": held})
        previous = pairs
        if _fell(history, cfg.spin):
            stopped_early = t + 1
            print(f"[spinlora] SPIN early stop after {name}: held-out {cfg.spin.keep_best} fell "
                  f"({_metric(history[-2], cfg.spin.keep_best):.4f} -> "
                  f"{_metric(history[-1], cfg.spin.keep_best):.4f})")
            break
    best = _pick_best(history, cfg.spin.keep_best)
    summary = {"stage": "spin", "iterations": cfg.spin.iterations, "keep_best": cfg.spin.keep_best,
               "best_iteration": best, "stopped_early_after": stopped_early, "history": history,
               "start_accounting": acct0.summary()}
    if best is not None and best > 0 and dist.is_main():
        dest = out / "best_adapter"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(out / f"iter_{best}" / "adapter", dest)
    return summary


_METRIC_KEY = {"heldout_accuracy": "accuracy", "heldout_gold_logp": "gold_logp_per_token",
               "heldout_win_rate": "win_rate_gold_vs_own", "heldout_reward": "reward_mean"}


def _metric(entry: dict, metric: str) -> float:
    v = entry["heldout"].get(_METRIC_KEY[metric])
    return -math.inf if v is None else v


def _fell(history: list[dict], spin_cfg: SpinConfig) -> bool:
    """spin.early_stop: the last iteration's held-out metric is below the one before it."""
    return spin_cfg.early_stop and _metric(history[-1], spin_cfg.keep_best) < _metric(
        history[-2], spin_cfg.keep_best)


def _pick_best(history: list[dict], metric: str | None) -> int | None:
    """Iteration with the best held-out metric (0 = the starting adapter, i.e. SPIN did not help);
    ties go to the earliest iteration."""
    if metric is None or not history[0]["heldout"]:
        return None
    scores = [(_metric(h, metric), -h["iteration"]) for h in history]
    return -max(scores)[1]
