"""Log-likelihood scoring of multiple-choice requests, scoring the shared context once.

A request is (context, continuation); the choices of one question are scored together. Their
token sequences share a prefix (the question, or for WinoGrande the sentence before the blank):
it runs through the model once, its KV cache is repeated for every choice, and only the
differing suffixes run as one padded batch. Tokenization follows lm-evaluation-harness
(``_encode_pair``): the context's trailing spaces move to the continuation, and the continuation's
tokens are those of ``encode(context + continuation)`` after the context's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


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


@torch.inference_mode()
def score_choices(model, tok, context_list: list[str], continuations: list[str]) -> list[ChoiceScore]:
    """Score the choices of one question: ``context_list[i] + continuations[i]`` for each i."""
    device = next(model.parameters()).device
    pairs = [encode_pair(tok, c, k) for c, k in zip(context_list, continuations)]
    seqs = [c + k for c, k in pairs]
    # shared prefix of all choices, never reaching into any continuation
    limit = min(len(c) for c, _ in pairs)
    p = 0
    while p < limit and all(s[p] == seqs[0][p] for s in seqs):
        p += 1
    p = max(p, 1)  # at least one token of context must run first
    prefix = torch.tensor([seqs[0][:p]], device=device)
    out = model(input_ids=prefix, use_cache=True, logits_to_keep=1)  # only the last is needed
    cache = out.past_key_values
    last_logp = out.logits[0, -1].float().log_softmax(-1)
    n = len(seqs)
    suffixes = [s[p:] for s in seqs]
    width = max(len(s) for s in suffixes)
    results: list[ChoiceScore | None] = [None] * n
    if width == 0:
        raise ValueError("a choice has an empty continuation")
    ids = torch.full((n, width), tok.pad_token_id or 0, dtype=torch.long, device=device)
    mask = torch.zeros((n, p + width), dtype=torch.long, device=device)
    mask[:, :p] = 1
    for i, s in enumerate(suffixes):
        ids[i, :len(s)] = torch.tensor(s, device=device)
        mask[i, p:p + len(s)] = 1
    cache.batch_repeat_interleave(n)
    pos = torch.arange(p, p + width, device=device)[None].expand(n, -1)
    logits = model(input_ids=ids, attention_mask=mask, past_key_values=cache,
                   position_ids=pos).logits.float()
    logp = logits.log_softmax(-1)
    for i, ((ctx, cont), suf) in enumerate(zip(pairs, suffixes)):
        # token j of the suffix is predicted by suffix position j-1, or by the prefix's last
        # position for j = 0
        start = len(ctx) - p  # index of the first continuation token inside the suffix
        total, greedy = 0.0, True
        for j in range(start, len(suf)):
            dist = last_logp if j == 0 else logp[i, j - 1]
            total += float(dist[suf[j]])
            greedy &= int(dist.argmax()) == suf[j]
        results[i] = ChoiceScore(total, len(cont), len(continuations[i]), greedy)
    return results
