"""Pure loss functions and the answer-only log-probability pass.

``answer_logps`` runs the decoder once and applies the LM head only at the positions that predict
answer tokens: the 49k-vocabulary logits of the prompt tokens are never built, which is where most
of the memory of a small model goes (PEFT_NOTES.md). ``token_logps`` then turns those hidden
states into log-probs ``LOGIT_CHUNK_TOKENS`` tokens at a time; with gradients on, each chunk is
recomputed in the backward pass (activation checkpointing), so tokens × vocabulary fp32 logits
never exist at once (151,936-entry vocabulary: 0.6 GB per 1024 tokens instead of the whole batch).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import SPIN_LOSSES
from .data import Batch

LN2 = math.log(2.0)
LOGIT_CHUNK_TOKENS = 1024  # tokens per LM-head chunk; None = all at once


def _lm(model):
    """The transformers model inside a PeftModel (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def output_head(model):
    """The LM head as hidden states -> fp32 logits, with the model's own transform between head
    and softmax that calling the head module alone would skip: Gemma 2/3's final-logit
    soft-capping (cap·tanh(x/cap)) and Cohere's logit scale."""
    lm = _lm(model)
    head = lm.get_output_embeddings()
    cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    cap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)
    scale = None if scale in (None, 1, 1.0) else float(scale)

    def logits(h):
        x = head(h).float()
        if scale is not None:
            x = x * scale
        if cap:
            x = torch.tanh(x / cap) * cap
        return x

    return logits


def token_logps(head, hidden: torch.Tensor, targets: torch.Tensor, chunk: int | None = None,
                greedy: bool = False):
    """log p(target) per token from the hidden states that predict them (``head``: hidden ->
    logits, from ``output_head``), in chunks of ``chunk`` tokens (None: ``LOGIT_CHUNK_TOKENS``).
    ``head=None`` means ``hidden`` already holds logits. With ``greedy`` also returns whether
    each target is the argmax (lm-eval's is_greedy).

    Under autograd each chunk runs inside ``torch.utils.checkpoint``: its logits are freed after
    the forward pass and rebuilt in the backward pass, one chunk at a time.
    """
    def piece(h, t):
        logits = (head(h) if head is not None else h).float()
        lp = -F.cross_entropy(logits, t, reduction="none")
        return (lp, logits.argmax(-1) == t) if greedy else (lp,)

    n = hidden.shape[0]
    step = chunk or LOGIT_CHUNK_TOKENS or max(n, 1)
    outs = []
    for i in range(0, n, step):
        h, t = hidden[i:i + step], targets[i:i + step]
        if n > step and torch.is_grad_enabled() and h.requires_grad:
            from torch.utils.checkpoint import checkpoint

            outs.append(checkpoint(piece, h, t, use_reentrant=False))
        else:
            outs.append(piece(h, t))
    if not outs:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return (empty, torch.zeros(0, dtype=torch.bool, device=hidden.device)) if greedy else empty
    lp = torch.cat([o[0] for o in outs])
    return (lp, torch.cat([o[1] for o in outs])) if greedy else lp


def _is_prompt_learning(model) -> bool:
    cfg = getattr(model, "active_peft_config", None)
    return bool(getattr(cfg, "is_prompt_learning", False))


def answer_logps(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log p(answer | prompt) per sequence, and the number of answer tokens per sequence.

    Works on a plain transformers model or a PeftModel (adapters active as set by the caller).
    """
    target_mask = batch.answer_mask[:, 1:]
    targets = batch.input_ids[:, 1:][target_mask]
    rows = torch.arange(batch.input_ids.shape[0], device=targets.device)
    rows = rows[:, None].expand_as(target_mask)[target_mask]
    if _is_prompt_learning(model):
        # virtual tokens are prepended inside PeftModel.forward: take the full logits there
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        tok_lp = token_logps(None, logits[:, -batch.input_ids.shape[1]:-1][target_mask], targets)
    else:
        hidden = _lm(model).get_decoder()(input_ids=batch.input_ids,
                                          attention_mask=batch.attention_mask).last_hidden_state
        tok_lp = token_logps(output_head(model), hidden[:, :-1][target_mask], targets)
    n = target_mask.shape[0]
    seq_logps = torch.zeros(n, dtype=tok_lp.dtype, device=tok_lp.device)
    seq_logps = seq_logps.index_add(0, rows, tok_lp)
    counts = target_mask.sum(1)
    return seq_logps, counts


def _decoder_alone(model):
    """The decoder of a transformers model or PeftModel, or None where it cannot run on its own:
    prompt-learning adapters (virtual tokens are added in PeftModel.forward), gradient
    checkpointing (which turns the KV cache off), models without the split."""
    lm = _lm(model)
    if (_is_prompt_learning(model) or getattr(lm, "is_gradient_checkpointing", False)
            or not hasattr(lm, "get_decoder")):
        return None
    return lm.get_decoder()


def shared_prompt_pass(model, prompts: list[list[int]], answers: list[list[list[int]]],
                       pad_id: int, skip: list[list[int]] | None = None):
    """Run each prompt once and all of its answers on top of its KV cache.

    The prompts (left-padded) run through the decoder with the cache on; the cache is repeated
    for each prompt's answers (any number per prompt) and the answers (right-padded) run on top
    of it. Returns ``(hidden, targets, rows)`` for the scored answer tokens, flattened: the hidden
    states that predict them, for ``token_logps`` with ``output_head(model)``. ``rows`` numbers
    the answers in order (prompt 0's answers first); ``skip[i][j]`` leading tokens of answer j of
    prompt i are context, not scored. Returns None where the decoder cannot run alone (see
    ``_decoder_alone``).
    """
    decoder = _decoder_alone(model)
    if decoder is None:
        return None
    device = next(model.parameters()).device
    b = len(prompts)
    counts = torch.tensor([len(a) for a in answers])
    lp = max(len(p) for p in prompts)
    p_ids = torch.full((b, lp), pad_id, dtype=torch.long)
    p_mask = torch.zeros((b, lp), dtype=torch.long)
    for i, p in enumerate(prompts):
        p_ids[i, lp - len(p):] = torch.tensor(p)
        p_mask[i, lp - len(p):] = 1
    p_ids, p_mask = p_ids.to(device), p_mask.to(device)
    p_pos = (p_mask.cumsum(1) - 1).clamp(min=0)
    out = decoder(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True)
    cache, last = out.past_key_values, out.last_hidden_state[:, -1]  # predicts answer token 0
    owner = torch.repeat_interleave(torch.arange(b), counts).to(device)
    cache.batch_select_indices(owner)
    flat = [a for per in answers for a in per]
    flat_skip = [s for per in skip for s in per] if skip else [0] * len(flat)
    la = max(len(a) for a in flat)
    a_ids = torch.full((len(flat), la), pad_id, dtype=torch.long)
    a_mask = torch.zeros((len(flat), la), dtype=torch.long)
    scored = torch.zeros((len(flat), la), dtype=torch.bool)
    for r, (a, s) in enumerate(zip(flat, flat_skip)):
        a_ids[r, :len(a)] = torch.tensor(a)
        a_mask[r, :len(a)] = 1
        scored[r, s:len(a)] = True
    a_ids, a_mask, scored = a_ids.to(device), a_mask.to(device), scored.to(device)
    mask = torch.cat([p_mask[owner], a_mask], 1)
    a_pos = p_mask.sum(1)[owner][:, None] + torch.arange(la, device=device)[None]
    hidden = decoder(input_ids=a_ids, attention_mask=mask, position_ids=a_pos,
                     past_key_values=cache, use_cache=True).last_hidden_state
    # answer token t is predicted by the hidden state before it: the prompt's last for t = 0
    pred = torch.cat([last[owner][:, None], hidden[:, :-1]], 1)
    rows = torch.arange(len(flat), device=device)[:, None].expand_as(scored)[scored]
    return pred[scored], a_ids[scored], rows


def shared_prompt_logps(model, prompts: list[list[int]], answers: list[list[list[int]]],
                        pad_id: int) -> torch.Tensor | None:
    """log p(answer | prompt) for k answers per prompt, running each prompt once.

    A SPIN pair's gold and generated answers share one forward and backward pass of the prompt.
    Returns a [B, k] tensor, or None where this path does not apply (see ``_decoder_alone``).
    """
    res = shared_prompt_pass(model, prompts, answers, pad_id)
    if res is None:
        return None
    hidden, targets, rows = res
    tok_lp = token_logps(output_head(model), hidden, targets)
    n = sum(len(a) for a in answers)
    seq = torch.zeros(n, dtype=tok_lp.dtype, device=tok_lp.device)
    return seq.index_add(0, rows, tok_lp).view(len(prompts), -1)


def sft_loss_sum(seq_logps: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Negative log-likelihood summed over answer tokens; normalised by the caller's token count."""
    return -seq_logps.sum(), float(counts.sum())


def spin_loss(policy_real: torch.Tensor, policy_gen: torch.Tensor, ref_real: torch.Tensor,
              ref_gen: torch.Tensor, beta: float, kind: str = "sigmoid",
              real_len: torch.Tensor | None = None, gen_len: torch.Tensor | None = None,
              nll_weight: float = 1.0, dpop_lambda: float = 50.0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SPIN loss per pair for gold answer y (chosen) and the opponent's answer y' (rejected).

    With h = (log p(y|x) − log p_t(y|x)) − (log p(y'|x) − log p_t(y'|x)) on summed log-probs:

    - ``sigmoid``: log(1 + exp(−β·h)). SPIN (Chen et al. 2024, arXiv 2401.01335, eq. 4.7 with
      ℓ(z) = log(1 + e^-z)); identical to DPO's sigmoid loss (Rafailov et al. 2023).
    - ``sigmoid_nll``: sigmoid + α·(−log p(y|x) / |y|), the gold answer's NLL per token
      (``nll_weight`` = α). Iterative RPO (Pang et al. 2024, arXiv 2404.19733, eq. 1), where DPO
      without the NLL term lost accuracy on GSM8K.
    - ``dpop``: −log σ(β·[h − λ_p·max(0, log p_t(y|x) − log p(y|x))]) (``dpop_lambda`` = λ_p).
      DPO-Positive (Pal et al. 2024, "Smaug", arXiv 2402.13228, eq. 3): the penalty is zero while
      the gold answer is at least as likely as under the reference, and grows as it falls below.
    - ``ipo``: (h̄ − 1/(2β))², h̄ being h on log-probs averaged per answer token as TRL computes
      IPO (``real_len`` / ``gen_len`` = answer lengths). Azar et al. 2023, arXiv 2310.12036, eq. 17.

    Returns (loss per pair, margin per pair = β·h, preference part per pair: the loss without the
    NLL term). At step 0 of an iteration player = reference, so h = 0 and the preference part is
    ``step0_value(kind, beta)``: ln 2 for the sigmoid family, 1/(4β²) for IPO.
    """
    h = (policy_real - ref_real) - (policy_gen - ref_gen)
    margin = beta * h
    if kind == "sigmoid":
        pref = F.softplus(-margin)
        return pref, margin, pref
    if kind == "sigmoid_nll":
        if real_len is None:
            raise ValueError("sigmoid_nll needs real_len (gold answer tokens per pair)")
        pref = F.softplus(-margin)
        return pref + nll_weight * (-policy_real / real_len.clamp(min=1)), margin, pref
    if kind == "dpop":
        penalty = torch.clamp(ref_real - policy_real, min=0)
        pref = F.softplus(-beta * (h - dpop_lambda * penalty))
        return pref, margin, pref
    if kind == "ipo":
        if real_len is None or gen_len is None:
            raise ValueError("ipo needs real_len and gen_len (answer tokens per pair)")
        h_avg = ((policy_real - ref_real) / real_len.clamp(min=1)
                 - (policy_gen - ref_gen) / gen_len.clamp(min=1))
        pref = (h_avg - 1.0 / (2.0 * beta)) ** 2
        return pref, margin, pref
    raise ValueError(f"spin.loss={kind!r}: use one of {', '.join(SPIN_LOSSES)}")


def step0_value(kind: str, beta: float) -> float:
    """The preference part of the loss when player = reference (the step-0 check)."""
    return 1.0 / (4.0 * beta * beta) if kind == "ipo" else LN2


@torch.inference_mode()
def score_sequences(model, pairs: list[tuple[list[int], list[int]]], pad_id: int,
                    batch_size: int = 16) -> tuple[list[float], list[int]]:
    """log p(answer | prompt) summed over answer tokens, for many (prompt_ids, answer_ids) pairs.

    Sorted by length into batches to cut padding; results come back in the caller's order.
    Used for SPIN's reference pass (once per iteration) and for evaluation.
    """
    from .data import collate

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    logps, counts = [0.0] * len(pairs), [0] * len(pairs)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        lp, n = answer_logps(model, collate([pairs[i] for i in idx], pad_id).to(device))
        for j, i in enumerate(idx):
            logps[i], counts[i] = float(lp[j]), int(n[j])
    if was_training:
        model.train()
    return logps, counts
