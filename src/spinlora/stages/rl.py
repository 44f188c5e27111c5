"""RL on the adapter with a checkable reward (``spinlora rl``; ``stages: [sft, rl, eval]``).

    spinlora rl configs/demo.yaml --adapter runs/demo/sft/adapter --output-dir runs/rl

Maximises E_{x~D, y~π(·|x)}[r(x, y)] − β·KL(π ‖ π_ref) with a group-relative policy gradient:
per round, ``rl.prompts`` SFT prompts get ``rl.samples`` k sampled answers each; r = 1 when the
answer's final number equals the gold ``#### N``, else 0; each answer's advantage is taken
against its own group, with no value network:

- ``grpo``: A = (r − mean) / (std + 1e-4) over the k answers (Shao et al. 2024, DeepSeekMath,
  arXiv 2402.03300);
- ``rloo``: A = r − mean of the other k − 1 (Ahmadian et al. 2024, arXiv 2402.14740).

Groups whose answers all score the same carry no signal and are skipped. The loss per answer is
the clipped surrogate on the length-normalised sequence ratio s = exp((log π − log π_old)/|y|)
(GSPO, Zheng et al. 2025, arXiv 2507.18071), −min(s·A, clip(s, 1 ± ε)·A), plus the KL term
β·½·k², k = (log π − log π_ref)/|y| on the model's own samples. Its gradient β·k·∇log π/|y| is,
in expectation over y ~ π, the gradient of β·KL(π‖π_ref) per token (E_π[k·∇log π]), carrying the
same 1/|y| as the surrogate's A·∇log π/|y| ("k2 in the loss"; see "A Comedy of Estimators: On KL
Regularization in RL Training of LLMs", arXiv 2512.21852). The plain estimate β·k in the loss,
which this stage used before, has zero expected gradient on samples from π (E_π[∇log π] = 0): β
did nothing but add noise. The logged ``kl`` is the estimate k itself. π_old is the adapter as the round
starts; π_ref is θ0 + Δθ of the adapter the stage starts from (the SFT adapter). Both use the
one model copy: π_ref's log-probs come from swapping the starting adapter's tensors in for one
pass and back. At a round's first step π = π_old, so the ratio is exactly 1 (``step0_ratio``),
and in the first round also π = π_ref, so the KL is 0: the RL analogue of SPIN's ln 2 check.
Generation goes through the same batched generator as SPIN's opponent. The answers are drawn
at ``rl.temperature`` T, so π, π_old and π_ref are all scored as softmax(logits / T): the
policy the gradient is about is the one that sampled (as TRL's GRPO does); scoring at T = 1 while
sampling at 0.8 made the importance ratio and the policy gradient refer to another policy.

``rl.algorithm: rft`` keeps the sampling and the reward and drops the gradient estimator:
each round, every prompt's distinct right, finished answers (at most ``rl.keep``; with
``data.answer_check: equation`` only those whose stated number is right too) become SFT rows,
fitted by token-level NLL for ``rl.epochs`` at ``rl.lr`` (rejection-sampling fine-tuning, Yuan
et al. 2023; expert iteration / ReST-EM, Singh et al. 2023, without restarting from the base
each round). A group with every answer right still teaches, where GRPO skips it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from .. import adapters, dist, rundir
from ..accounting import Accountant, count_parameters
from ..adapters import adapter_state, at_state
from ..config import RunConfig, own_micro_batch
from ..data import DataError, Example, prompt_pool, subset
from ..generate import generate
from ..scoring import score_answers
from ..train import MetricsLog, Objective, train_loop
from .sft import sft_objective
from .spin import _heldout, answer_check, is_correct, stated_right


@dataclasses.dataclass
class Sample:
    prompt_ids: list[int]
    gen_ids: list[int]
    advantage: float
    old: float = 0.0  # log π_old(y|x), summed
    ref: float = 0.0  # log π_ref(y|x), summed


def advantages(rewards: list[float], kind: str) -> list[float]:
    """Group-relative advantages of one prompt's k rewards."""
    k = len(rewards)
    mean = sum(rewards) / k
    if kind == "rloo":
        return [r - (sum(rewards) - r) / (k - 1) for r in rewards]
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (k - 1)) if k > 1 else 0.0
    return [(r - mean) / (std + 1e-4) for r in rewards]


def group_units(samples: list[Sample], size: int) -> list[list[int]]:
    """Micro-batches of at most ``size`` samples that keep a prompt's samples together (a group:
    consecutive samples of one prompt), groups in order of their longest sequence, so that
    ``score_samples`` runs each prompt once under all of its answers; a group larger than
    ``size`` is cut. The fixed units of the π_old / π_ref pass and of training."""
    groups: list[list[int]] = []
    for i, s in enumerate(samples):
        if groups and samples[groups[-1][0]].prompt_ids == s.prompt_ids:
            groups[-1].append(i)
        else:
            groups.append([i])
    groups = [g[k:k + size] for g in groups for k in range(0, len(g), size)]
    groups.sort(key=lambda g: max(len(samples[i].prompt_ids) + len(samples[i].gen_ids) for i in g))
    units: list[list[int]] = []
    for g in groups:
        if units and len(units[-1]) + len(g) <= size:
            units[-1] += g
        else:
            units.append(list(g))
    return units


def score_samples(model, items: list[Sample], pad_id: int, temperature: float):
    """log π(y|x) summed over each sample's answer tokens at ``temperature``, and its answer
    tokens: each distinct prompt runs once with all of its samples on its KV cache
    (``score_answers``), not once per sample. A group of k samples of a ~70-token SVAMP prompt
    with ~18-token answers then costs ~27 tokens a sample instead of ~88. Differentiable unless
    called under ``torch.inference_mode``."""
    where: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(items):
        where.setdefault(tuple(s.prompt_ids), []).append(i)
    groups = list(where.values())
    lp, n, _ = score_answers(model, [items[g[0]].prompt_ids for g in groups],
                             [[items[i].gen_ids for i in g] for g in groups], pad_id,
                             temperature=temperature)
    order = torch.tensor([i for g in groups for i in g], device=lp.device)
    back = torch.empty_like(order)
    back[order] = torch.arange(len(order), device=lp.device)
    return lp[back], n[back]


def old_and_ref(model, samples: list[Sample], start: dict[str, torch.Tensor], pad_id: int,
                batch_size: int, temperature: float) -> tuple[list[list[int]], int]:
    """Set each sample's log π_old (the adapter as it is) and log π_ref (the adapter state
    ``start``, swapped in for one pass; the same numbers without a pass while the adapter is still
    at ``start``) at the sampling temperature. Scored as training scores
    them (``score_samples``) on fixed micro-batches (``group_units``), which it returns for
    ``train_loop(units=...)`` with the number of passes run: the step-0 ratio is then exactly 1
    in bf16 as in fp32."""
    units = group_units(samples, batch_size)

    @torch.inference_mode()
    def score() -> dict[int, float]:
        done = {}
        for b, idx in enumerate(units):
            if dist.mine(b):  # several processes: batch b is process b mod world's
                lp, _ = score_samples(model, [samples[i] for i in idx], pad_id, temperature)
                done.update(zip(idx, lp.tolist()))
        return done

    was_training = model.training
    model.eval()
    old = dist.gather(score(), len(samples))
    passes = 1
    if at_state(model, start):  # the first round: π_old is π_ref, the same pass would repeat
        ref = list(old)
    else:
        with adapter_state(model, start):
            ref = dist.gather(score(), len(samples))
        passes = 2
    if was_training:
        model.train()
    for s, o, f in zip(samples, old, ref):
        s.old, s.ref = o, f
    return units, passes


def right_answers(group: list, rewards: list[float], keep: int | None, room: int) -> list:
    """``rl.algorithm: rft``: a group's distinct right answers, in sample order, at most
    ``keep``; only finished ones that fit ``room`` tokens (an answer cut short is no example to
    fit). Rejection-sampling fine-tuning (Yuan et al. 2023, arXiv 2308.01825) / STaR's filter
    (Zelikman et al. 2022): the reward only filters; what is fitted is the model's own text."""
    kept, seen = [], set()
    for g, rew in zip(group, rewards):
        if rew > 0 and g.finished and len(g.ids) <= room and g.text not in seen:
            seen.add(g.text)
            kept.append(g)
    return kept if keep is None else kept[:keep]


def rl_objective(pad_id: int, beta: float, clip: float, temperature: float = 1.0) -> Objective:
    """The clipped surrogate + KL loss; log-probs under softmax(logits / ``temperature``), the
    policy the samples were drawn from (π_old, π_ref and π alike)."""
    def loss(model, items: list[Sample]):
        device = next(model.parameters()).device
        lp, n = score_samples(model, items, pad_id, temperature)
        as_t = lambda xs: torch.tensor(xs, device=device, dtype=lp.dtype)  # noqa: E731
        n = n.clamp(min=1).to(lp.dtype)
        adv, old, ref = (as_t([getattr(s, k) for s in items]) for k in ("advantage", "old", "ref"))
        ratio = torch.exp((lp - old) / n)
        surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
        kl = (lp - ref) / n  # per-token log-ratio estimate of KL(π‖π_ref) (logged)
        total = (-surrogate + beta * 0.5 * kl ** 2).sum()  # k2: the KL's own gradient
        return total, {"ratio": ratio.detach().sum(), "kl": kl.detach().sum(),
                       "clipped": ((ratio.detach() - 1).abs() > clip).float().sum()}

    return Objective(loss=loss, weight=lambda items: float(len(items)),
                     tokens=lambda items: sum(len(s.prompt_ids) + len(s.gen_ids) for s in items),
                     length=lambda s: len(s.prompt_ids) + len(s.gen_ids),
                     metric_keys=("ratio", "kl", "clipped"))


def _checkable(pool: list[Example]) -> list[Example]:
    """The rows whose gold answer has a final number the reward can check."""
    return [e for e in pool if is_correct("", e.answer) is not None]


def run_rl(cfg: RunConfig, model, tokenizer, fmt, sft_examples: list[Example],
           heldout: list[Example], out: Path, acct: Accountant,
           init_path: Path | None = None) -> dict:
    """``cfg.rl.rounds`` rounds of sampling and group-relative updates on the adapter.

    Each round is built in ``out/round_t.partial`` and takes its final name when complete
    (``rundir``): its adapter, its training log and its record. With ``--resume`` the rounds
    finished earlier are reused: round t draws its prompts, samples, optimizer and training
    seed from t alone and trains against the starting adapter, so round k+1 runs exactly as it
    would have without the stop."""
    r = cfg.rl
    examples = _checkable(prompt_pool(sft_examples, r.prompt_rows, "rl.prompt_rows"))
    plain = (_checkable(prompt_pool(sft_examples, "plain", "rl.plain_prompts"))
             if r.plain_prompts else [])
    if not examples:
        raise DataError("rl: no training row has a checkable gold answer ('#### N'); the "
                        "correctness reward needs one")
    place = {id(e): i for i, e in enumerate(sft_examples)}  # a prompt's row in the SFT set
    start = adapters.snapshot(model)  # the KL reference: the adapter RL starts from
    start_file = out / "start.json"
    if cfg.resume and start_file.is_file():
        before = json.loads(start_file.read_text())
    else:
        before = _heldout(model, tokenizer, fmt, heldout, cfg, acct, "rl_start")
        rundir.write_json(start_file, before)
    tcfg = own_micro_batch(cfg.train, r.micro_batch_size)  # RL's samples a pass
    rounds = []
    while (cfg.resume and len(rounds) < r.rounds
           and rundir.finished(out / f"round_{len(rounds) + 1}")):
        rounds.append(json.loads((out / f"round_{len(rounds) + 1}" / "result.json").read_text()))
    reused = len(rounds)  # their time and memory are in the interrupted attempt's, not here
    if rounds:
        adapters.load_weights(model, cfg.adapter, out / f"round_{len(rounds)}" / "adapter")
        print(f"[spinlora] resume: RL rounds 1..{len(rounds)} finished earlier, reused")
    for t in range(len(rounds), r.rounds):
        part = rundir.begin(out / f"round_{t + 1}")
        log = MetricsLog(part / "metrics.jsonl", cfg.train.report_to, "rl")
        try:
            rec = _round(cfg, t, model, tokenizer, fmt, examples, plain, place, start, tcfg,
                         acct, log)
        finally:
            log.close()
        with acct.phase("save"):
            adapters.save(model, cfg.adapter, part / "adapter", init_path)
        rundir.finish(part, rec)
        rounds.append(rec)
        print(f"[spinlora] rl round {t + 1}: reward {rec['reward_mean']:.3f}, "
              f"{rec['informative_groups']}/{rec['prompts']} "
              + ("prompts with a right answer kept" if r.algorithm == "rft"
                 else "groups with signal")
              + (f" ({rec['plain_groups_with_signal']}/{rec['plain_prompts']} plain, reward "
                 f"{rec['plain_reward_mean']:.3f})" if plain else ""))
    with acct.phase("save"):
        adapters.save(model, cfg.adapter, out / "adapter", init_path)
        if dist.is_main():
            with open(out / "rounds.jsonl", "w") as f:
                f.writelines(json.dumps(x) + "\n" for x in rounds)
            with open(out / "metrics.jsonl", "w") as f:  # every round's steps, in order
                for t in range(r.rounds):
                    f.write((out / f"round_{t + 1}" / "metrics.jsonl").read_text())
    after = _heldout(model, tokenizer, fmt, heldout, cfg, acct, "rl_end")
    trained = [x for x in rounds if "step0_ratio" in x]
    rft = r.algorithm == "rft"  # no ratio, no KL: their step-0 checks do not apply (None)
    return {"stage": "rl", "reward": "correctness", "answer_check": cfg.data.answer_check,
            "algorithm": r.algorithm, "advantage": None if rft else r.advantage,
            "beta": None if rft else r.beta, "clip": None if rft else r.clip, "lr": r.lr,
            **({"keep": r.keep} if rft else {}),
            "samples_per_prompt": r.samples, "rounds": rounds, "rounds_reused": reused,
            "step0_ratio_ok": None if rft else all(abs(x["step0_ratio"] - 1) < 1e-4
                                                    for x in trained),
            "first_round_kl0_ok": None if rft else bool(trained) and trained[0]["round"] == 1
            and abs(trained[0]["step0_kl"]) < 1e-4,
            "heldout_before": before, "heldout_after": after,
            "generated_tokens": sum(x["generated_tokens"] for x in rounds),
            "parameters": count_parameters(model), "method": cfg.adapter.method}


def _round(cfg: RunConfig, t: int, model, tokenizer, fmt, examples: list[Example],
           plain: list[Example], place: dict, start: dict[str, torch.Tensor], tcfg,
           acct: Accountant, log: MetricsLog) -> dict:
    """Round ``t`` (from 0): sample ``rl.samples`` answers to a seeded draw of prompts (and of
    ``rl.plain_prompts`` from ``plain``), reward them, and train the adapter on the groups with
    a signal. Returns the round's record."""
    r, pad = cfg.rl, tokenizer.pad_token_id
    prompts = subset(examples, r.prompts, cfg.data.seed + t) if r.prompts else examples
    n_pool = len(prompts)  # the prompts from rl.prompt_rows' pool; the plain ones follow
    prompts = prompts + (subset(plain, r.plain_prompts, cfg.data.seed + t) if plain else [])
    gen_cfg = dataclasses.replace(cfg.generation, do_sample=True,
                                  temperature=r.temperature, top_p=r.top_p,
                                  seed=r.seed + 1000 * t)
    with acct.phase("generate") as ph:
        gens, produced = generate(model, tokenizer,
                                  [e.prompt_ids for e in prompts for _ in range(r.samples)],
                                  gen_cfg, fmt.stop_ids, desc=f"rl round {t + 1}")
        ph.tokens += produced
    samples, rewards_all, informative, by_row = [], [], 0, {}
    for i, e in enumerate(prompts):
        group = gens[i * r.samples:(i + 1) * r.samples]
        check = answer_check(cfg, e)
        rewards = [float(bool(is_correct(g.text, e.answer, check))) for g in group]
        rewards_all += rewards
        by_row[place[id(e)]] = sum(rewards) / len(rewards)
        room = cfg.data.max_length - len(e.prompt_ids)
        if r.algorithm == "rft":  # fitted text must be right in its arithmetic too:
            # an equation-checked answer may state a wrong sum (`56 * 9 = 524`)
            fit = [x if check != "equation" else x * stated_right(g.text, e.answer)
                   for g, x in zip(group, rewards)]
            kept = right_answers(group, fit, r.keep, room)
            informative += bool(kept)
            samples += [Example(e.prompt, g.text, e.prompt_ids, list(g.ids)) for g in kept]
            continue
        if max(rewards) == min(rewards):
            continue  # no signal in this group
        informative += 1
        for g, a in zip(group, advantages(rewards, r.advantage)):
            samples.append(Sample(e.prompt_ids, list(g.ids[:room]) or [fmt.end_id], a))
    rec = {"round": t + 1, "prompts": len(prompts), "samples": len(gens),
           "generated_tokens": produced,
           "reward_mean": sum(rewards_all) / max(len(rewards_all), 1),
           "informative_groups": informative, "trained_samples": len(samples),
           "sft_rows": sorted(by_row),  # the rows drawn as prompts, and each one's mean reward
           "sft_row_rewards": [by_row[i] for i in sorted(by_row)]}
    if plain:  # the plain prompts' share of the above (rewards are 0 / 1: a signal is 0 < mean < 1)
        means = [by_row[place[id(e)]] for e in prompts[n_pool:]]
        rec.update(plain_prompts=len(means), plain_groups_with_signal=sum(0 < x < 1 for x in means),
                   plain_reward_mean=sum(means) / max(len(means), 1))
    if samples and r.algorithm == "rft":  # the kept answers as SFT rows: NLL, no ratio or KL
        fit = sft_objective(pad, cfg.train.share_prefix)
        steps = train_loop(model, samples, fit, tcfg, r.lr, r.epochs, acct, log,
                           cfg.seed + t + 1, f"rft round {t + 1}",
                           extra={"round": t + 1}, method=cfg.adapter.method)
        rec.update(steps=len(steps), loss_first=steps[0]["loss"],
                   loss_last=steps[-1]["loss"])
    elif samples:
        with acct.phase("reference") as ph:
            units, passes = old_and_ref(model, samples, start, pad,
                                        tcfg.micro_batch_size, r.temperature)
            ph.tokens += passes * sum(len(s.prompt_ids) + len(s.gen_ids) for s in samples)
        steps = train_loop(model, samples, rl_objective(pad, r.beta, r.clip, r.temperature),
                           tcfg, r.lr, r.epochs, acct, log, cfg.seed + t + 1,
                           f"rl round {t + 1}", extra={"round": t + 1},
                           method=cfg.adapter.method, units=units)
        rec.update(steps=len(steps), step0_ratio=steps[0]["ratio"],
                   step0_kl=steps[0]["kl"], loss_last=steps[-1]["loss"],
                   kl_last=steps[-1]["kl"])
    return rec
