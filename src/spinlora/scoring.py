"""Log-probabilities of answer tokens: the one module every scorer goes through.

    score_answers(model, prompts, answers, pad_id)  # k answers per prompt: SPIN's training and
                                                    # reference passes, multiple-choice scoring
    answer_logps(model, batch)                      # a collated batch: SFT, the Hessian
    score_sequences(model, pairs, pad_id)           # many (prompt, answer) pairs, inference

Two passes, and one place that picks between them (``score_answers``):

- shared prompt (``shared_prompt_pass``): each prompt runs once, left-padded, with the KV cache
  on; the cache is repeated for its answers, which run right-padded on top of it;
- full sequence (``answer_logps``): prompt + answer as one right-padded sequence, for models whose
  decoder cannot run alone (prompt-learning adapters add virtual tokens inside
  ``PeftModel.forward``; gradient checkpointing turns the cache off).

Either way the LM head runs only at the positions that predict scored tokens: the
49k-vocabulary logits of prompt tokens are never built, which is where most of the memory of a
small model goes (PEFT_NOTES.md). ``token_logps`` turns those hidden states into log-probs
``LOGIT_CHUNK_TOKENS`` tokens at a time; with gradients on, each chunk is recomputed in the
backward pass, so tokens × vocabulary fp32 logits never exist at once (151,936-entry
vocabulary: 0.6 GB per 1024 tokens instead of the whole batch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import dist
from .data import Batch, collate
from .models import release_workspace

LOGIT_CHUNK_TOKENS = 1024  # tokens per LM-head chunk; None = all at once


def _lm(model):
    """The transformers model inside a PeftModel (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def output_head(model, temperature: float = 1.0):
    """The LM head as hidden states -> fp32 logits, with the model's own transform between head
    and softmax that calling the head module alone would skip: Gemma 2/3's final-logit
    soft-capping (cap·tanh(x/cap)) and Cohere's logit scale; then divided by ``temperature``
    (the distribution a sampler at that temperature draws from)."""
    lm = _lm(model)
    head = lm.get_output_embeddings()
    cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    cap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)
    scale = None if scale in (None, 1, 1.0) else float(scale)

    fp32_head = _fp32_head(head) if head.weight.device.type == "cpu" else None

    def logits(h):
        x = fp32_head(h) if fp32_head is not None else head(h).float()
        if scale is not None:
            x = x * scale
        if cap:
            x = torch.tanh(x / cap) * cap
        return x if temperature == 1.0 else x / temperature

    return logits


def _fp32_head(head):
    """On a CPU with a bf16 / fp16 model: the LM head in fp32 (None when it already is).

    A bf16 logit of magnitude ~20 is rounded to 1/8, so a token's log-prob is off by up to
    ~0.06 nats, and by a different amount when the matmul kernel changes with the number of rows:
    SPIN's reference pass and training pass then disagree (step-0 loss 0.94 instead of ln 2 with
    ``dpop``) and the bf16 loss drifts from the fp32 one. The fp32 copy of the head's weight is
    made once per weight version and kept on the module; the rest of the model stays bf16."""
    w = getattr(head, "weight", None)
    if w is None or w.dtype == torch.float32:
        return None
    key = (w.data_ptr(), w._version)
    cached = getattr(head, "_spinlora_fp32", None)
    if cached is None or cached[0] != key:
        with torch.inference_mode(False):  # a copy autograd may use later, whatever made it
            bias = head.bias.detach().float() if getattr(head, "bias", None) is not None else None
            cached = (key, w.detach().float(), bias)
        head._spinlora_fp32 = cached
    _, weight, bias = cached
    return lambda h: F.linear(h.float(), weight, bias)


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


def _checkpointing(lm) -> bool:
    """Whether activation checkpointing is on (transformers 5 renamed is_gradient_checkpointing,
    whose old name now warns on every read)."""
    if hasattr(lm, "is_activation_checkpointing"):  # (a default to getattr would read the
        return bool(lm.is_activation_checkpointing)   # old name too, and warn)
    return bool(getattr(lm, "is_gradient_checkpointing", False))


def set_checkpointing(model, on: bool) -> None:
    """Turn activation checkpointing on (non-reentrant) or off, by transformers 5's names where
    the model has them: the old ``gradient_checkpointing_enable`` / ``_disable`` warn on every
    call (a FutureWarning in every run that checkpoints, and in every ``spinlora plan``, which
    probes with it)."""
    if on:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        elif hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    elif hasattr(model, "gradient_checkpointing_disable"):
        model.gradient_checkpointing_disable()


def _decoder_alone(model):
    """The decoder of a transformers model or PeftModel, or None where it cannot run on its own:
    prompt-learning adapters (virtual tokens are added in PeftModel.forward), gradient
    checkpointing (which turns the KV cache off), models without the split."""
    lm = _lm(model)
    if (_is_prompt_learning(model) or _checkpointing(lm)
            or not hasattr(lm, "get_decoder")):
        return None
    return lm.get_decoder()


def _causal_mask_only(batch: Batch) -> torch.Tensor | None:
    """The attention mask a right-padded batch needs: none. Under causal attention a real token
    sees only the tokens before it, all real, so its hidden state is the same with or without the
    padding mask (tested); only the unscored pad positions change. Without a mask, transformers
    calls SDPA with ``is_causal=True``, which on CUDA can use the flash kernel; with one it takes
    the masked "memory-efficient" kernel, whose bf16 backward returns NaN gradients on some
    inputs (pytorch/pytorch#178251; the bf16 SFT of benchmarks/results/spin_quality stopped on a
    NaN gradient at step 17, where the same batch on CPU gave a finite one). A batch that is not
    right-padded keeps its mask."""
    m = batch.attention_mask
    lengths = m.sum(1)
    right_padded = bool((m == (torch.arange(m.shape[1], device=m.device)[None] < lengths[:, None])
                         ).all())
    return None if right_padded else m


def _full_pass(model, batch: Batch, greedy: bool = False, temperature: float = 1.0):
    """Per scored token (``batch.answer_mask``): log-prob, argmax hit (with ``greedy``) and row."""
    target_mask = batch.answer_mask[:, 1:]
    targets = batch.input_ids[:, 1:][target_mask]
    rows = torch.arange(batch.input_ids.shape[0], device=targets.device)
    rows = rows[:, None].expand_as(target_mask)[target_mask]
    if _is_prompt_learning(model) or not hasattr(_lm(model), "get_decoder"):
        # virtual tokens are prepended inside PeftModel.forward: take the full logits there
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        picked = logits[:, -batch.input_ids.shape[1]:-1][target_mask]
        if temperature != 1.0:  # (token_logps takes them to fp32 chunk by chunk)
            picked = picked.float() / temperature
        out = token_logps(None, picked, targets, greedy=greedy)
    else:
        hidden = _lm(model).get_decoder()(input_ids=batch.input_ids,
                                          attention_mask=_causal_mask_only(batch)).last_hidden_state
        out = token_logps(output_head(model, temperature), hidden[:, :-1][target_mask], targets,
                          greedy=greedy)
    return (*out, rows) if greedy else (out, None, rows)


def _per_row(values: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, rows, values)


def answer_logps(model, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log p(answer | prompt) per sequence of a collated batch, and its answer tokens.

    Works on a plain transformers model or a PeftModel (adapters active as set by the caller).
    """
    tok_lp, _, rows = _full_pass(model, batch)
    return _per_row(tok_lp, rows, batch.input_ids.shape[0]), batch.answer_mask[:, 1:].sum(1)


def prompt_then_answers(decoder, prompts: list[list[int]], answers: list[list[list[int]]],
                        pad_id: int):
    """Each prompt once through ``decoder`` (left-padded, KV cache on), then all of its answers
    (any number per prompt, right-padded) on top of its repeated cache. Returns ``(states,
    a_ids, lengths)`` over the answers in order (prompt 0's first): ``states[r, t]`` is the
    hidden state after t tokens of answer r (t = 0: its prompt's last token), so it predicts
    answer token t; ``a_ids`` the padded answers and ``lengths`` their real lengths."""
    device = next(decoder.parameters()).device
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
    cache, last = out.past_key_values, out.last_hidden_state[:, -1]
    owner = torch.repeat_interleave(torch.arange(b), counts).to(device)
    flat = [a for per in answers for a in per]
    lengths = torch.tensor([len(a) for a in flat], device=device)
    la = max(len(a) for a in flat)
    a_ids = torch.full((len(flat), la), pad_id, dtype=torch.long)
    a_mask = torch.zeros((len(flat), la), dtype=torch.long)
    for r, a in enumerate(flat):
        a_ids[r, :len(a)] = torch.tensor(a, dtype=torch.long)
        a_mask[r, :len(a)] = 1
    a_ids, a_mask = a_ids.to(device), a_mask.to(device)
    if la == 0:  # no answer tokens at all: nothing runs on top of the prompts
        return last[owner][:, None], a_ids, lengths
    cache.batch_select_indices(owner)
    mask = torch.cat([p_mask[owner], a_mask], 1)
    a_pos = p_mask.sum(1)[owner][:, None] + torch.arange(la, device=device)[None]
    hidden = decoder(input_ids=a_ids, attention_mask=mask, position_ids=a_pos,
                     past_key_values=cache, use_cache=True).last_hidden_state
    return torch.cat([last[owner][:, None], hidden], 1), a_ids, lengths


def shared_prompt_pass(model, prompts: list[list[int]], answers: list[list[list[int]]],
                       pad_id: int, skip: list[list[int]] | None = None):
    """Run each prompt once and all of its answers on top of its KV cache
    (``prompt_then_answers``).

    Returns ``(hidden, targets, rows)`` for the scored answer tokens, flattened: the hidden
    states that predict them, for ``token_logps`` with ``output_head(model)``. ``rows`` numbers
    the answers in order (prompt 0's answers first); ``skip[i][j]`` leading tokens of answer j of
    prompt i are context, not scored. Returns None where the decoder cannot run alone (see
    ``_decoder_alone``).
    """
    decoder = _decoder_alone(model)
    if decoder is None:
        return None
    states, a_ids, lengths = prompt_then_answers(decoder, prompts, answers, pad_id)
    n, la = a_ids.shape
    flat_skip = torch.tensor([s for per in skip for s in per] if skip else [0] * n,
                             device=a_ids.device)
    t = torch.arange(la, device=a_ids.device)[None]
    scored = (t >= flat_skip[:, None]) & (t < lengths[:, None])
    pred = states[:, :la]  # the state before answer token t predicts it
    rows = torch.arange(n, device=a_ids.device)[:, None].expand_as(scored)[scored]
    return pred[scored], a_ids[scored], rows


def score_answers(model, prompts: list[list[int]], answers: list[list[list[int]]], pad_id: int,
                  skip: list[list[int]] | None = None, greedy: bool = False,
                  temperature: float = 1.0):
    """log p(answer | prompt) summed over the scored tokens of every answer of every prompt
    (any number per prompt; prompt 0's answers first), the scored tokens per answer, and with
    ``greedy`` whether every scored token was the argmax (lm-eval's is_greedy; else None).

    ``skip[i][j]`` leading tokens of answer j of prompt i are context, not scored. Each prompt
    runs once under its answers where the decoder can run alone, else every answer is one full
    sequence. Differentiable unless called under ``torch.inference_mode``. ``temperature``
    scores under softmax(logits / T), the distribution a sampler at T draws from (RL).
    """
    n = sum(len(a) for a in answers)
    res = shared_prompt_pass(model, prompts, answers, pad_id, skip)
    if res is not None:
        hidden, targets, rows = res
        out = token_logps(output_head(model, temperature), hidden, targets, greedy=greedy)
        tok_lp, hit = out if greedy else (out, None)
    else:
        flat = [(p, a) for p, per in zip(prompts, answers) for a in per]
        flat_skip = [s for per in skip for s in per] if skip else [0] * n
        batch = collate(flat, pad_id)
        for r, ((p, _), s) in enumerate(zip(flat, flat_skip)):
            batch.answer_mask[r, len(p):len(p) + s] = False  # context inside the answer
        tok_lp, hit, rows = _full_pass(model, batch.to(next(model.parameters()).device), greedy,
                                       temperature)
    sums = _per_row(tok_lp, rows, n)
    counts = _per_row(torch.ones_like(tok_lp), rows, n).long()
    all_hit = _per_row((~hit).float(), rows, n) == 0 if greedy else None
    return sums, counts, all_hit


@torch.inference_mode()
def score_sequences(model, pairs: list[tuple[list[int], list[int]]], pad_id: int,
                    batch_size: int = 16, temperature: float = 1.0
                    ) -> tuple[list[float], list[int]]:
    """log p(answer | prompt) summed over answer tokens, for many (prompt_ids, answer_ids) pairs.

    Sorted by length into batches to cut padding; results come back in the caller's order.
    Launched with several processes, batch b is process b mod world's (``dist``).
    """
    was_training = model.training
    model.eval()
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    done = {}
    for b, start in enumerate(range(0, len(order), batch_size)):
        if not dist.mine(b):
            continue
        idx = order[start:start + batch_size]
        lp, n, _ = score_answers(model, [pairs[i][0] for i in idx], [[pairs[i][1]] for i in idx],
                                 pad_id, temperature=temperature)
        for j, i in enumerate(idx):
            done[i] = (float(lp[j]), int(n[j]))
    if was_training:
        model.train()
    release_workspace()  # spinlora_cpu attention's fp32 upcasts
    res = dist.gather(done, len(pairs))
    return [lp for lp, _ in res], [n for _, n in res]
