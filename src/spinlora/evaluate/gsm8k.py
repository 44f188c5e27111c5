"""GSM8K evaluation: greedy generation, final-number extraction, and two cheap held-out signals.

``accuracy`` (the headline, spinlora's own): the number after ``#### ``, else the last number in
the answer, compared as canonical numbers (commas, ``$``, trailing ``.``, leading and trailing
zeros dropped; nanochat ``tasks/gsm8k.py``). ``accuracy_strict`` / ``accuracy_flexible`` are
lm-evaluation-harness's ``strict-match`` / ``flexible-extract`` of ``gsm8k`` v3.0 exactly: its
regexes, take-first / last-match filters and exact string match after ``regexes_to_ignore``. The two signals that move even when
accuracy is at the floor: mean log-prob per token of the gold answers, and the share of questions
where the model prefers the gold answer to its own greedy answer (higher mean log-prob per token).
"""
from __future__ import annotations

import dataclasses
import math
import random
import re
from collections import Counter

import torch

from .. import svamp
from ..accounting import Accountant
from ..config import GenerationConfig
from ..data import ChatFormat, Example
from ..generate import beam_answers, generate
from ..scoring import score_sequences
from .choice import stderr

_HASH = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")
_NUM = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


_DECIMAL = re.compile(r"(-?)(\d*)(?:\.(\d*))?")


def normalize_number(s: str) -> str:
    """Canonical text of a number: no commas, ``$`` or trailing ``.``, no leading zeros, no
    trailing fractional zeros ("1,000.50" -> "1000.5", "7.0" -> "7"). Exact on the digits, with
    no float conversion, so any length of number is safe; anything else comes back stripped."""
    s = s.strip().replace(",", "").replace("$", "").rstrip(".")
    m = _DECIMAL.fullmatch(s)
    if not m or not any(c.isdigit() for c in s):
        return s
    sign, whole, frac = m.group(1), m.group(2).lstrip("0") or "0", (m.group(3) or "").rstrip("0")
    text = f"{whole}.{frac}" if frac else whole
    return "0" if text == "0" else sign + text


def extract_strict(text: str) -> str | None:
    """lm-eval's strict match: only the number after ``#### ``."""
    m = _HASH.search(text)
    return normalize_number(m.group(1)) if m else None


def extract_flexible(text: str) -> str | None:
    """lm-eval's flexible extract: the last number in the text."""
    nums = _NUM.findall(text)
    return normalize_number(nums[-1]) if nums else None


# lm-evaluation-harness `gsm8k` v3.0, exactly: its two filters and exact_match's settings
LM_EVAL_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")  # strict-match, first match
LM_EVAL_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # flexible-extract, last match
LM_EVAL_IGNORE = [",", r"\$", r"(?s).*#### ", r"\.$"]  # regexes_to_ignore; ignore_case: true


def lm_eval_filter(text: str, flexible: bool) -> str:
    """lm-eval's RegexFilter + take_first: the first strict match, or the last flexible match
    (the first non-empty group of it); "[invalid]" when nothing matches."""
    matches = (LM_EVAL_FLEXIBLE if flexible else LM_EVAL_STRICT).findall(text)
    if not matches:
        return "[invalid]"
    m = matches[-1] if flexible else matches[0]
    if isinstance(m, tuple):
        m = next((x for x in m if x), "[invalid]")
    return m.strip()


def lm_eval_match(prediction: str, gold_answer: str) -> bool:
    """lm-eval's exact_match for gsm8k: the same regexes removed from the filtered prediction and
    from the whole gold answer text, case ignored, then string equality (no number parsing)."""
    for pattern in LM_EVAL_IGNORE:
        prediction = re.sub(pattern, "", prediction)
        gold_answer = re.sub(pattern, "", gold_answer)
    return prediction.lower() == gold_answer.lower()


def extract_answer(text: str) -> str | None:
    """The final answer of a GSM8K-style solution: ``#### N`` if present, else the last number."""
    return extract_strict(text) or extract_flexible(text)


STOP_STRINGS = ["Question:", "</s>", "<|im_end|>"]  # lm-eval gsm8k `until`

# Prompting baselines (eval.prompting), each a zero-shot chat prompt: the question + a suffix.
# "reflection" answers zero-shot, then is asked (a second user turn) to check and revise.
PROMPTING = {
    "standard": "",
    "rules": ("\n\nRules:\n1. Work through the problem step by step.\n2. Check every "
              "calculation.\n3. End with the final answer on its own line as '#### <number>'."),
    "cot": "\n\nLet's think step by step.",  # Kojima et al. 2022, arXiv 2205.11916
    "reflection": "",
}
REFLECT = ("Review your solution above step by step. If you find a mistake, correct it. End with "
           "the final answer on its own line as '#### <number>'.")  # Madaan et al. 2023 (Self-Refine)


def fewshot_draws(pool: list[dict], n_questions: int, k: int, seed: int = 1234,
                  per_question: bool = True) -> list[list[dict]]:
    """The k exemplars of each of the first ``n_questions`` test questions, drawn from ``pool``
    (the training rows, in file order) as lm-evaluation-harness 0.4's default ContextSampler
    does with ``fewshot_random_seed`` 1234: one ``random.Random(seed)`` and, for question i in
    test-file order, ``rnd.sample(pool, k)`` (lm-eval draws k + 1 and removes the question only
    when the exemplars come from the test split itself; GSM8K's come from train).
    Indexed by the question's position in the whole test file, so any subset of questions gets
    the exemplars lm-eval's full run gives them. ``per_question=False``: one seeded draw shared
    by every question (faster: their common prefix is computed once; not lm-eval's prompts)."""
    if k > len(pool):
        raise ValueError(f"{k} shots asked but the training split has {len(pool)} rows")
    rnd = random.Random(seed)
    if not per_question:
        return [rnd.sample(pool, k)] * n_questions
    return [rnd.sample(pool, k) for _ in range(n_questions)]


def fewshot_prompt_ids(tokenizer, fmt: ChatFormat, question: str, shots: list[dict],
                       style: str) -> list[int]:
    """GSM8K k-shot prompts. ``plain``: lm-eval's "Question: …\nAnswer: …" text, no chat
    template; ``chat``: the shots as earlier user/assistant turns of the chat template
    (lm-eval's --apply_chat_template --fewshot_as_multiturn)."""
    if style == "plain":
        text = "".join(f"Question: {s['prompt']}\nAnswer: {s['answer']}\n\n" for s in shots)
        # no BOS: lm-eval's HF model encodes without special tokens (add_bos_token=False)
        return tokenizer(text + f"Question: {question}\nAnswer:", add_special_tokens=False).input_ids
    msgs = fmt.messages(question, [(s["prompt"], s["answer"]) for s in shots])
    return list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                              return_dict=False))


def evaluate_gsm8k(model, tokenizer, fmt: ChatFormat, examples: list[Example],
                   gen_cfg: GenerationConfig, acct: Accountant, label: str,
                   shots: list[list[dict]] | None = None, style: str = "chat",
                   do_generate: bool = True, prompting: str = "standard",
                   signals: bool = True) -> dict:
    """Score the model as it is (adapters as set by the caller) on ``examples``.

    Zero-shot (no ``shots``) uses the training chat template; ``shots`` holds each example's
    exemplars (``fewshot_draws``); with shots, ``style`` picks the
    plain lm-eval text or the multi-turn chat prompt, and generation stops at lm-eval's stop
    strings. The log-prob signals always use the zero-shot chat prompt (the training format).
    ``do_generate=False`` computes only the gold answers' log-prob (cheap; for sweeps): the
    accuracy fields are then None. ``prompting`` (not ``standard``) is a zero-shot baseline:
    ``rules`` / ``cot`` add their text to the question; ``reflection`` answers zero-shot, then
    answers again after the ``REFLECT`` turn, and the second answer is scored. ``signals=False``
    skips the log-prob signals (one scoring pass over gold and own answers).
    """
    if not do_generate:
        with acct.phase(f"eval_score[{label}]") as ph:
            pairs = [(e.prompt_ids, e.answer_ids) for e in examples]
            lps, counts = score_sequences(model, pairs, tokenizer.pad_token_id)
            ph.tokens += sum(len(p) + len(a) for p, a in pairs)
        n = len(examples)
        return {"label": label, "n": n, "accuracy": None, "accuracy_stderr": None,
                "gold_logp_per_token": sum(lp / max(c, 1) for lp, c in zip(lps, counts)) / max(n, 1),
                "win_rate_gold_vs_own": None, "samples": []}
    prompts = [e.prompt_ids for e in examples]
    if PROMPTING.get(prompting):
        prompts = [fmt.prompt_ids(e.prompt + PROMPTING[prompting]) for e in examples]
    stop_strings = None
    if shots and prompting == "standard":
        prompts = [fewshot_prompt_ids(tokenizer, fmt, e.prompt, s, style)
                   for e, s in zip(examples, shots, strict=True)]
        stop_strings = STOP_STRINGS
    with acct.phase(f"eval_generate[{label}]") as ph:
        gens, produced = generate(model, tokenizer, prompts, gen_cfg, fmt.stop_ids,
                                  desc=f"eval {label}", stop_strings=stop_strings)
        ph.tokens += produced
    if stop_strings:  # cut the stop string itself, as lm-eval does
        for g in gens:
            for s in stop_strings:
                g.text = g.text.split(s)[0]
    first = None
    if prompting == "reflection":
        first = gens
        msgs = [fmt.messages(e.prompt) + [{"role": "assistant", "content": g.text},
                                          {"role": "user", "content": REFLECT}]
                for e, g in zip(examples, gens)]
        second = [list(tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=True,
                                                     return_dict=False)) for m in msgs]
        with acct.phase(f"eval_revise[{label}]") as ph:
            gens, produced = generate(model, tokenizer, second, gen_cfg, fmt.stop_ids,
                                      desc=f"eval {label} (revise)")
            ph.tokens += produced
    golds = [extract_answer(e.answer) for e in examples]
    correct = [g.text and extract_answer(g.text) == gold for g, gold in zip(gens, golds)]
    # lm-eval's strict-match and flexible-extract, exactly (string match on its filters)
    strict = [lm_eval_match(lm_eval_filter(g.text, False), e.answer) for g, e in zip(gens, examples)]
    flexible = [lm_eval_match(lm_eval_filter(g.text, True), e.answer)
                for g, e in zip(gens, examples)]
    n = len(examples)
    gold_pt = gen_pt = [float("nan")] * n
    if signals:
        with acct.phase(f"eval_score[{label}]") as ph:
            pairs = [(e.prompt_ids, e.answer_ids) for e in examples]
            pairs += [(e.prompt_ids, g.ids or [fmt.end_id]) for e, g in zip(examples, gens)]
            lps, counts = score_sequences(model, pairs, tokenizer.pad_token_id)
            ph.tokens += sum(len(p) + len(a) for p, a in pairs)
        gold_pt = [lps[i] / max(counts[i], 1) for i in range(n)]
        gen_pt = [lps[n + i] / max(counts[n + i], 1) for i in range(n)]
    acc = sum(map(bool, correct)) / max(n, 1)
    win = sum(g > o for g, o in zip(gold_pt, gen_pt)) / max(n, 1) if signals else None
    return {
        "label": label, "n": n,
        "accuracy": acc, "accuracy_stderr": math.sqrt(acc * (1 - acc) / max(n - 1, 1)),
        "accuracy_strict": sum(strict) / max(n, 1), "accuracy_flexible": sum(flexible) / max(n, 1),
        "shots": len(shots[0]) if shots and prompting == "standard" else 0,
        "style": style if shots and prompting == "standard" else "chat", "prompting": prompting,
        "prompt_suffix": PROMPTING[prompting] or None,
        **({"reflect_turn": REFLECT} if prompting == "reflection" else {}),
        "gold_logp_per_token": sum(gold_pt) / max(n, 1) if signals else None,
        "win_rate_gold_vs_own": win,
        "own_logp_per_token": sum(gen_pt) / max(n, 1) if signals else None,
        "own_finished_rate": sum(g.finished for g in gens) / max(n, 1),
        "own_mean_tokens": sum(len(g.ids) for g in gens) / max(n, 1),
        "samples": [{"question": e.prompt, "gold": gold, "output": g.text,
                     "extracted": extract_answer(g.text), "correct": bool(c),
                     "finished": g.finished,
                     **({"first_output": first[i].text} if first else {})}
                    for i, (e, g, gold, c) in enumerate(zip(examples, gens, golds, correct))],
    }


def _by_numbers(samples: list[dict]) -> dict:
    """Accuracy split by SVAMP's "irrelevant information" variation: the problems that state
    numbers their equation does not use (447 of the 1000), and the rest."""
    split = {}
    for name, flag in (("irrelevant", True), ("relevant", False)):
        part = [s["correct"] for s in samples if s["irrelevant_numbers"] is flag]
        a = sum(part) / max(len(part), 1)
        split[name] = {"n": len(part), "acc": a, "acc_stderr": stderr(a, len(part))}
    return split


def evaluate_svamp(model, tokenizer, fmt: ChatFormat, examples: list[Example],
                   gen_cfg: GenerationConfig, acct: Accountant, label: str) -> dict:
    """SVAMP (``svamp.py``): greedy zero-shot answers in the training chat template, scored as
    the SVAMP paper scores its models, by the value of the equation the answer writes
    (``accuracy``; the stated number where it writes none), with the stated number's accuracy
    (``stated_accuracy``) beside it. Each sample keeps both verdicts, so two models' rows can be
    compared problem by problem (paired differences)."""
    g = evaluate_gsm8k(model, tokenizer, fmt, examples, gen_cfg, acct, f"{label} svamp",
                       signals=False)
    n = g["n"]
    for s, e in zip(g["samples"], examples, strict=True):
        s.update(svamp.score(s["output"], e.meta["value"]), index=e.meta.get("index"),
                 gold_value=e.meta["value"],
                 irrelevant_numbers=svamp.irrelevant_numbers(e.prompt, e.answer))
    return {"n": n, **_svamp_scores(g["samples"]), "finished_rate": g["own_finished_rate"],
            "mean_tokens": g["own_mean_tokens"], "max_new_tokens": gen_cfg.max_new_tokens,
            "samples": g["samples"]}


def _svamp_scores(samples: list[dict]) -> dict:
    """A SVAMP row's scores from its scored samples: the headline (equation value), the stated
    number's, the split by irrelevant numbers and the share that wrote an equation."""
    n = len(samples)
    acc = sum(s["correct"] for s in samples) / max(n, 1)
    stated = sum(s["stated_correct"] for s in samples) / max(n, 1)
    return {"acc": acc, "acc_stderr": stderr(acc, n), "stated_acc": stated,
            "stated_acc_stderr": stderr(stated, n), "by_numbers": _by_numbers(samples),
            "with_equation": sum(s["has_equation"] for s in samples) / max(n, 1)}


def _checked_value(scored: dict) -> float | None:
    """The value an answer is scored by (its equation's, else its stated number) when it passes
    ``eval.checked_beams``'s check, else None: a count is never negative (3137 of the 3138
    training answers are >= 0; 249 are not integers, so the sign is the whole check)."""
    v = scored["equation_value"] if scored["has_equation"] else scored["stated"]
    return v if v is not None and v >= 0 else None


@torch.inference_mode()
def evaluate_svamp_checked(model, tokenizer, fmt: ChatFormat, examples: list[Example],
                           gen_cfg: GenerationConfig, acct: Accountant, label: str,
                           beams: int, greedy: tuple[dict, list[dict]] | None = None) -> dict:
    """SVAMP with a checked answer (``eval.checked_beams``): the greedy answer stays unless the
    value it is scored by is missing or negative; then the problem is decoded again by beam
    search (``beams`` beams, no sampling; ``generation.batch_size / beams`` problems a call)
    and the highest-scoring beam whose value is >= 0
    replaces it (none: the greedy answer stays). No label is read to choose. Each sample keeps
    the greedy answer (``greedy_output``, ``greedy_correct``) beside the one scored, so the
    row pairs with the greedy row problem by problem. ``greedy``: the greedy row's SVAMP
    summary and samples for these examples, when this evaluation has them (not decoded again);
    they are used only when their problems are these, in this order."""
    if greedy is not None and ([s.get("index") for s in greedy[1]]
                               == [e.meta.get("index") for e in examples]):
        c = {**greedy[0], "samples": [dict(s) for s in greedy[1]]}
        print(f"[spinlora] eval {label}: SVAMP checked, from the greedy row's own answers")
    else:
        c = evaluate_svamp(model, tokenizer, fmt, examples, gen_cfg, acct, f"{label} greedy")
    samples = c["samples"]
    failed = [i for i, s in enumerate(samples) if _checked_value(s) is None]
    replaced = 0
    found: list = []
    if failed:
        with acct.phase(f"eval_beams[{label} svamp]") as ph:
            found, produced = beam_answers(model, tokenizer,
                                           [examples[i].prompt_ids for i in failed], gen_cfg,
                                           fmt.stop_ids, beams, desc=f"eval {label} svamp beams")
            ph.tokens += produced
    for i, answers in zip(failed, found, strict=True):
        s = samples[i]
        s.update(greedy_output=s["output"], greedy_correct=s["correct"], checked=True)
        for j, a in enumerate(answers):
            scored = svamp.score(a.text, s["gold_value"])
            if _checked_value(scored) is not None:
                s.update(scored, output=a.text, extracted=extract_answer(a.text),
                         finished=a.finished, beam=j)
                replaced += 1
                break
    print(f"[spinlora] eval {label}: SVAMP checked: {len(failed)} of {c['n']} greedy answers "
          f"failed the check (no value, or a negative one), {replaced} replaced by a beam of "
          f"{beams}")
    return {**c, **_svamp_scores(samples), "greedy_acc": c["acc"], "checked_beams": beams,
            "failed_check": len(failed), "replaced": replaced, "samples": samples}


def _vote_key(value) -> str | None:
    """The key two sampled answers share when they reach the same answer: a GSM8K answer's
    canonical text; a SVAMP value rounded to 4 decimals (10/3 from two equations is one vote)."""
    if value is None or isinstance(value, str):
        return value
    return repr(round(float(value), 4) + 0.0)


def _sample_groups(model, tokenizer, fmt: ChatFormat, examples: list[Example],
                   gen_cfg: GenerationConfig, acct: Accountant, label: str, k: int,
                   temperature: float, task: str) -> tuple[list[dict], int]:
    """k sampled zero-shot answers per problem (top-p 1), each with its vote key and verdict:
    for ``svamp`` the value the headline scores (its equation's, else its stated number), for
    ``gsm8k`` its final answer. One record per problem, every sample's text kept."""
    sample_cfg = dataclasses.replace(gen_cfg, do_sample=True, temperature=temperature, top_p=1.0)
    with acct.phase(f"eval_generate[{label} {task}]") as ph:
        gens, produced = generate(model, tokenizer, [e.prompt_ids for e in examples for _ in range(k)],
                                  sample_cfg, fmt.stop_ids, desc=f"eval {label} {task}")
        ph.tokens += produced
    records = []
    for i, e in enumerate(examples):
        group = gens[i * k:(i + 1) * k]
        if task == "svamp":
            scored = [svamp.score(g.text, e.meta["value"]) for g in group]
            keys = [_vote_key(s["equation_value"] if s["has_equation"] else s["stated"])
                    for s in scored]
            ok = [bool(s["correct"]) for s in scored]
            head = {"question": e.prompt, "index": e.meta.get("index"),
                    "gold_value": e.meta["value"],
                    "irrelevant_numbers": svamp.irrelevant_numbers(e.prompt, e.answer)}
        else:
            gold = extract_answer(e.answer)
            keys = [extract_answer(g.text) if g.text else None for g in group]
            ok = [bool(g.text) and key == gold for g, key in zip(group, keys)]
            head = {"question": e.prompt, "gold": gold}
        head["gold_answer"] = e.answer
        votes = Counter(key for key in keys if key is not None)
        records.append({**head, "votes": dict(votes.most_common()), "pass": any(ok),
                        "sample_correct": sum(ok),
                        "samples": [{"text": g.text, "value": key, "correct": c,
                                     "finished": g.finished}
                                    for g, key, c in zip(group, keys, ok)]})
    return records, produced


def _pick(record: dict, j: int | None) -> dict:
    """The record's answer is sample ``j`` (None: no answer, wrong)."""
    s = record["samples"][j if j is not None else 0]
    return {**record, "output": s["text"], "correct": j is not None and s["correct"],
            "finished": s["finished"]}


def _majority(record: dict) -> int | None:
    """The first sample reaching the value most samples reach (None when none states one)."""
    if not record["votes"]:
        return None
    top = next(iter(record["votes"]))  # most_common order: ties keep the first reached
    return next(j for j, s in enumerate(record["samples"]) if s["value"] == top)


def _summary(records: list[dict], k: int, task: str) -> dict:
    n = len(records)
    acc = sum(r["correct"] for r in records) / max(n, 1)
    pass_k = sum(r["pass"] for r in records) / max(n, 1)
    out = {"n": n, "acc": acc, "acc_stderr": stderr(acc, n), "pass_at_k": pass_k,
           "pass_at_k_stderr": stderr(pass_k, n),
           "sample_acc": sum(r["sample_correct"] for r in records) / max(n * k, 1)}
    if task == "svamp":
        out["by_numbers"] = _by_numbers(records)
    return out


@torch.inference_mode()
def evaluate_self_consistency(model, tokenizer, fmt: ChatFormat, examples: list[Example],
                              gen_cfg: GenerationConfig, acct: Accountant, label: str, k: int,
                              temperature: float, task: str) -> dict:
    """Self-consistency (Wang et al. 2023): k sampled zero-shot answers per problem, and the
    answer is the value most of them reach (a tie goes to the value reached first in sample
    order); no verifier and no label. Also reports pass@k (any sample right: the ceiling of any
    reranker) and the mean accuracy of the samples. Each problem's record keeps every sample's
    text, value and verdict, so the row pairs with the greedy one problem by problem."""
    records, produced = _sample_groups(model, tokenizer, fmt, examples, gen_cfg, acct, label, k,
                                       temperature, task)
    records = [_pick(r, _majority(r)) for r in records]
    return {**_summary(records, k, task), "self_consistency": k, "temperature": temperature,
            "generated_tokens": produced, "samples": records}


@torch.inference_mode()
def evaluate_best_of_n(model, tokenizer, fmt: ChatFormat, examples: list[Example],
                       gen_cfg: GenerationConfig, acct: Accountant, label: str, reward_model,
                       reward_fmt: ChatFormat, n: int, temperature: float = 0.7,
                       task: str = "gsm8k") -> dict:
    """Best-of-n by a reward model: n sampled zero-shot answers per question, the one the reward
    model scores highest is the answer (``stages/reward.py``; Cobbe et al. 2021 used a verifier
    the same way). Also reports the mean accuracy of the samples, pass@n (any of n right), the
    ceiling any reranker could reach, and the majority vote of the same samples
    (``majority_acc``, as ``evaluate_self_consistency``). ``task``: ``gsm8k`` (final answer) or
    ``svamp`` (the headline's equation value)."""
    from ..reward_model import score_groups

    records, produced = _sample_groups(model, tokenizer, fmt, examples, gen_cfg, acct,
                                       f"{label}+best_of_{n}", n, temperature, task)
    with acct.phase(f"eval_rerank[{label}+best_of_{n} {task}]"):
        scores = score_groups(reward_model, reward_fmt, [r["question"] for r in records],
                              [[s["text"] for s in r["samples"]] for r in records])
    majority = [_pick(r, _majority(r))["correct"] for r in records]
    picked = []
    for i, r in enumerate(records):
        for s, sc in zip(r["samples"], scores[i]):
            s["reward"] = sc
        best = max(range(n), key=lambda j: r["samples"][j]["reward"])
        picked.append(_pick(r, best))
    m = len(picked)
    summary = _summary(picked, n, task)
    maj = sum(majority) / max(m, 1)
    summary.update(best_of=n, temperature=temperature, majority_acc=maj,
                   majority_acc_stderr=stderr(maj, m), generated_tokens=produced)
    return {"label": f"{label}+best_of_{n}", "n": m, "best_of": n, "temperature": temperature,
            "accuracy": summary["acc"], "accuracy_stderr": summary["acc_stderr"],
            "pass_at_n": summary["pass_at_k"], "sample_accuracy": summary["sample_acc"],
            "majority_accuracy": maj, "tasks": {task: summary}, "samples": picked}
