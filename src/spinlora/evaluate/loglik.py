"""Log-likelihood scoring of multiple-choice requests, scoring the shared context once.

A request is (context, continuation); the choices of one question are scored together. Their
token sequences share a prefix (the question, or for WinoGrande the sentence before the blank):
it runs through the model once, its KV cache is repeated for every choice, and only the
differing suffixes run. Many questions go through one forward pass: their prefixes as one
left-padded batch, then all their suffixes as one right-padded batch. Tokenization follows lm-evaluation-harness
(``_encode_pair``): the context's trailing spaces move to the continuation, and the continuation's
tokens are those of ``encode(context + continuation)`` after the context's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import dist


def choice_chars(continuation: str) -> int:
    """acc_norm's length: lm-eval divides by ``len(choice)`` of the choice text itself, without
    the target delimiter (the single leading space) that the scored continuation carries."""
    return len(continuation) - (1 if continuation.startswith(" ") else 0)


@dataclass
class ChoiceScore:
    logprob: float  # sum of log p(continuation tokens | context)
    n_tokens: int
    n_chars: int  # for acc_norm (length-normalised by characters, as lm-eval does)
    greedy: bool  # every continuation token is the argmax


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok(context + continuation, add_special_tokens=False).input_ids
    ctx = tok(context, add_special_tokens=False).input_ids
    if tok.bos_token_id is not None and getattr(tok, "add_bos_token", False):
        whole, ctx = [tok.bos_token_id] + whole, [tok.bos_token_id] + ctx
    if whole[:len(ctx)] != ctx:  # a merge across the boundary: fall back to separate encodings
        cont = tok(continuation, add_special_tokens=False).input_ids
        return ctx, cont
    return ctx, whole[len(ctx):]


def _groups(tok, contexts: list[str], continuations: list[str]):
    """Token groups of one question: [(prompt, [(suffix, n_context_tokens_in_suffix, choice)])].

    The prompt is the choices' longest common token prefix, never reaching into a continuation;
    when the choices differ at their first token (a WinoGrande blank at the start), each choice
    is its own group with its first token as the prompt.
    """
    pairs = [encode_pair(tok, c, k) for c, k in zip(contexts, continuations)]
    for c, k in pairs:
        if not k or not c:
            raise ValueError("a choice has an empty context or continuation")
    seqs = [c + k for c, k in pairs]
    limit = min(len(c) for c, _ in pairs)
    p = 0
    while p < limit and all(s[p] == seqs[0][p] for s in seqs):
        p += 1
    if p == 0:
        return [(s[:1], [(s[1:], len(c) - 1, i)]) for i, (s, (c, _)) in enumerate(zip(seqs, pairs))]
    return [(seqs[0][:p], [(s[p:], len(c) - p, i) for i, (s, (c, _)) in enumerate(zip(seqs, pairs))])]


@torch.inference_mode()
def score_questions(model, tok, questions: list[tuple[list[str], list[str]]],
                    token_budget: int = 1536, progress=None) -> list[list[ChoiceScore]]:
    """Score many questions, each ``(contexts, continuations)``; many questions per forward pass.

    Questions are sorted by length and packed into batches of about ``token_budget`` padded
    tokens: their prompts run once as one left-padded batch, then all their choices' suffixes
    as one right-padded batch on the repeated KV cache (``scoring.score_answers``, which scores
    full sequences for models whose decoder cannot run alone, as prompt-learning adapters).
    """
    from ..scoring import score_answers

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    groups = []  # (question, prompt, [(suffix, skip, choice)])
    for q, (contexts, conts) in enumerate(questions):
        groups += [(q, prompt, ans) for prompt, ans in _groups(tok, contexts, conts)]
    results: list[list[ChoiceScore | None]] = [[None] * len(c) for _, c in questions]
    order = sorted(range(len(groups)), key=lambda g: len(groups[g][1]) + max(len(a[0]) for a in groups[g][2]))
    batches, cur = [], []
    for g in order:  # pack by padded size: prompts x longest prompt + answers x longest answer
        cand = cur + [g]
        lp = max(len(groups[i][1]) for i in cand)
        la = max(len(a[0]) for i in cand for a in groups[i][2])
        na = sum(len(groups[i][2]) for i in cand)
        if cur and len(cand) * lp + na * la > token_budget:
            batches.append(cur)
            cand = [g]
        cur = cand
    if cur:
        batches.append(cur)
    mine = {}  # several processes: batch b is process b mod world's (dist)
    for b, batch in enumerate(batches):
        if not dist.mine(b):
            continue
        prompts = [groups[g][1] for g in batch]
        answers = [[a[0] for a in groups[g][2]] for g in batch]
        skip = [[a[1] for a in groups[g][2]] for g in batch]
        sums, ntok, all_hit = score_answers(model, prompts, answers, pad, skip, greedy=True)
        r = 0
        for g in batch:
            q = groups[g][0]
            for _, _, choice in groups[g][2]:
                mine[(q, choice)] = ChoiceScore(float(sums[r]), int(ntok[r]),
                                                choice_chars(questions[q][1][choice]),
                                                bool(all_hit[r]))
                r += 1
        if progress is not None:
            progress(len({groups[g][0] for g in batch}) * dist.world())
    keys = [(q, c) for q, (_, conts) in enumerate(questions) for c in range(len(conts))]
    pos = {k: i for i, k in enumerate(keys)}
    scores = dist.gather({pos[k]: v for k, v in mine.items()}, len(keys))
    for (q, c), score in zip(keys, scores):
        results[q][c] = score
    return results


def score_choices(model, tok, context_list: list[str], continuations: list[str]) -> list[ChoiceScore]:
    """Score the choices of one question: ``context_list[i] + continuations[i]`` for each i."""
    return score_questions(model, tok, [(context_list, continuations)])[0]
