"""Batched generation with the KV cache, for the SPIN opponent and for evaluation.

Prompts are sorted by length and cut into batches, so a batch holds prompts of similar length and
left padding stays small; results come back in the caller's order. Each result records whether
the answer ended with an end-of-turn token or was cut at ``max_new_tokens``.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import dist
from .accounting import decoding_heap
from .config import GenerationConfig
from .models import release_workspace, upcast


def _growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A DynamicLayer that writes into a preallocated buffer instead of ``torch.cat``.

        transformers' DynamicLayer concatenates the whole cache at every decoding step, which
        copies O(length) memory per token: on a CPU it took 45 % of a batch-32 decode step. This
        layer grows its buffer in chunks and hands attention a view, so a step copies one token.
        """

        chunk = 256

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self._kbuf = self._vbuf = None
                self._n = 0
            n, new = self._n, key_states.shape[-2]
            consistent = (self._kbuf is not None and self.keys.shape[-2] == n
                          and self.keys.data_ptr() == self._kbuf.data_ptr())
            if not consistent:  # first call, or crop/select replaced self.keys: rebuild
                n = self.keys.shape[-2] if self.keys.numel() else 0
                self._kbuf = self._vbuf = None
            if self._kbuf is None or n + new > self._kbuf.shape[-2]:
                cap = n + new + self.chunk
                shape = (*key_states.shape[:-2], cap, key_states.shape[-1])
                kbuf = key_states.new_empty(shape)
                vbuf = value_states.new_empty((*value_states.shape[:-2], cap, value_states.shape[-1]))
                if n:
                    kbuf[..., :n, :] = self.keys
                    vbuf[..., :n, :] = self.values
                self._kbuf, self._vbuf = kbuf, vbuf
            self._kbuf[..., n:n + new, :] = key_states
            self._vbuf[..., n:n + new, :] = value_states
            self._n = n + new
            self.keys = self._kbuf[..., :self._n, :]
            self.values = self._vbuf[..., :self._n, :]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            """Keep the rows ``indices`` (a copy of their filled positions) and let the old
            buffer go now. Left to the next ``update``, every layer held its old buffer beside
            its selected copy at once: twice the cache at each drop of finished rows (200 SVAMP
            prompts in one fp32 batch: peak RSS 4.6 GB)."""
            super().batch_select_indices(indices)
            self._kbuf = self._vbuf = None  # the next update rebuilds room to grow

        def adopt(self, parts: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> None:
            """Replace the cache by ``parts`` (keys, values of some rows each) stacked along the
            batch, each right-aligned in ``length`` positions (zeros on the left, which the
            caller masks): one copy into a fresh buffer with room to grow."""
            k0, v0 = parts[0]
            self.reserve(sum(k.shape[0] for k, _ in parts), length, k0, v0)
            r = 0
            for k, v in parts:
                self.place(r, k, v)
                r += k.shape[0]

        def reserve(self, rows: int, length: int, like_k: torch.Tensor,
                    like_v: torch.Tensor) -> None:
            """An empty cache of ``rows`` rows and ``length`` positions, zeros (which the caller
            masks) until ``place`` fills them, with room to grow. Only the ``length`` positions
            are written: the room's memory is not touched until the cache grows into it."""
            cap = length + self.chunk
            kbuf = like_k.new_empty((rows, like_k.shape[1], cap, like_k.shape[-1]))
            vbuf = like_v.new_empty((rows, like_v.shape[1], cap, like_v.shape[-1]))
            kbuf[..., :length, :].zero_()
            vbuf[..., :length, :].zero_()
            if not self.is_initialized:
                self.lazy_initialization(kbuf[..., :0, :], vbuf[..., :0, :])
            self._kbuf, self._vbuf, self._n = kbuf, vbuf, length
            self.keys, self.values = kbuf[..., :length, :], vbuf[..., :length, :]

        def place(self, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
            """Rows ``start`` … of a reserved cache from ``k``, ``v``, right-aligned (their last
            positions, if longer than the cache)."""
            n = min(k.shape[-2], self._n)
            rows = slice(start, start + k.shape[0])
            self._kbuf[rows, :, self._n - n:self._n] = k[..., k.shape[-2] - n:, :]
            self._vbuf[rows, :, self._n - n:self._n] = v[..., v.shape[-2] - n:, :]

    return GrowingLayer


def _full_attention(cfg) -> bool:
    """Every layer plain full attention (no sliding window, no hybrid or linear layers)."""
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return False
    return not (getattr(cfg, "layer_types", None)
                and any(t != "full_attention" for t in cfg.layer_types))


def _text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def growing_cache(model):
    """A KV cache that grows in place, or None (use transformers' default) for models whose
    attention is not plain full attention (sliding windows, hybrid or linear layers)."""
    from transformers.cache_utils import Cache

    cfg = _text_config(model)
    if not _full_attention(cfg):
        return None
    layer = _growing_layer_class()
    return Cache(layers=[layer() for _ in range(cfg.num_hidden_layers)])


STATIC_WIDTH = 64  # static cache: prompt widths rounded up to this (one compiled shape a bucket)
STATIC_LENGTH = 256  # and cache lengths (prompt + new tokens) to this


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def use_static_cache(model, cfg: GenerationConfig, prompt_learning: bool = False) -> bool:
    """``generation.cache``: static where asked, or with ``auto`` on CUDA. transformers compiles
    the decoding step of a model whose cache is static (``torch.compile``, mode reduce-overhead:
    CUDA graphs), which takes the per-token launch overhead off a small model's decode. On this
    project's CPU the static cache was slower than the growing one (0.93x against 1.09x HF
    generate, benchmarks/generation_speed.py), so ``auto`` keeps the growing cache there. Models
    that are not plain full attention and prompt-learning adapters keep the dynamic cache (a
    clear error if ``static`` was asked)."""
    if cfg.cache == "dynamic":
        return False
    device = next(model.parameters()).device
    if cfg.cache == "auto" and device.type != "cuda":
        return False
    plain = not prompt_learning and _full_attention(_text_config(model))
    if cfg.cache == "static" and not plain:
        raise ValueError("generation.cache=static needs a full-attention model without a "
                         "prompt-learning adapter; use generation.cache=dynamic (or auto)")
    return plain


def _compile_errors() -> tuple[type[BaseException], ...]:
    """What torch.compile raises when it cannot compile a step (dynamo, inductor)."""
    errors: list[type[BaseException]] = []
    try:
        from torch._dynamo.exc import TorchDynamoException

        errors.append(TorchDynamoException)
    except ImportError:
        pass
    try:
        from torch._inductor.exc import InductorError

        errors.append(InductorError)
    except ImportError:
        pass
    return tuple(errors)


def common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest common prefix, leaving at least one token of every sequence."""
    limit = min(len(s) for s in seqs) - 1
    n = 0
    while n < limit and all(s[n] == seqs[0][n] for s in seqs):
        n += 1
    return n


def _layout(batch: list[list[int]], shared: int, width: int, pad: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ids and attention mask of a batch of prompts, ``width`` wide. Padding goes after
    the ``shared`` prefix (before everything when there is none): every prompt ends where
    generation starts, and positions follow the attention mask."""
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    for row, p in enumerate(batch):
        ids[row, :shared], attn[row, :shared] = torch.tensor(p[:shared]), 1
        ids[row, width - len(p) + shared:] = torch.tensor(p[shared:])
        attn[row, width - len(p) + shared:] = 1
    return ids, attn


def _until_stop(row: list[int], ends: list[int]) -> tuple[list[int], bool]:
    """A generated row up to and including its first end token, and whether it had one (a row
    of transformers' ``generate`` goes on with padding after it)."""
    for k, t in enumerate(row):
        if t in ends:
            return row[:k + 1], True
    return list(row), False


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The argmax of every row, taken in fp32 (the same index; argmax of bf16 on a CPU is ~4x
    slower) from ``upcast``'s workspace (64 rows of a 49k vocabulary are 12.6 MB a step)."""
    return upcast(logits, 2).argmax(-1)


def _sample(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator | None) -> torch.Tensor:
    """The next token of every row: argmax (greedy), or a draw from softmax(logits / T) cut to
    the top-p nucleus (HF's TemperatureLogitsWarper + TopPLogitsWarper, top_k off)."""
    if not cfg.do_sample:
        return greedy(logits)
    probs = torch.softmax(logits.float() / max(cfg.temperature, 1e-6), dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > cfg.top_p  # keeps the token that crosses top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


PREFILL_ROWS = 64  # prompts a prefill pass takes at most (decode_dropping_finished)


def prefill_in_chunks(model, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor, cache,
                      shared: int, rows: int = PREFILL_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """The prefill of a large decoding batch, ``rows`` prompts a pass, into one growing cache.

    A decoding step costs ~170 ms whatever its rows on 2 AVX2 cores (SmolLM2, fp32), so many
    rows decode faster together; but one prefill pass over them all pads every prompt to the
    longest of the batch and holds all their activations at once. Each chunk (prompts in
    length order) is padded only to its own longest prompt; its keys and values are then placed
    right-aligned in ``cache`` (the rows' shared prefix, if any, already in it), whose extra
    left positions the returned mask hides. Returns the last position's logits of every row and
    the attention mask that goes with the cache."""
    n, width = ids.shape
    body = attn[:, shared:].bool()
    leads = []
    for s in range(0, n, rows):
        cols = body[s:s + rows].any(0)  # columns some prompt of the chunk has a token in
        leads.append(int(cols.float().argmax()) if bool(cols.any()) else body.shape[1])
    length = width - min(leads)
    prefix = [(layer.keys, layer.values) for layer in cache.layers] if shared else None
    logits, masks = [], []
    for c, (s, lead) in enumerate(zip(range(0, n, rows), leads)):
        r = slice(s, s + rows)
        sub = growing_cache(model)
        if prefix:
            for layer, (k, v) in zip(sub.layers, prefix):
                layer.adopt([(k[r], v[r])], shared)
        m = torch.cat([attn[r, :shared], attn[r, shared + lead:]], 1)
        logits.append(model(input_ids=ids[r, shared + lead:], attention_mask=m,
                            position_ids=pos[r, shared + lead:], past_key_values=sub,
                            use_cache=True, logits_to_keep=1).logits[:, -1])
        for main, layer in zip(cache.layers, sub.layers):
            if c == 0:
                main.reserve(n, length, layer.keys, layer.values)
            main.place(s, layer.keys, layer.values)
        masks.append(F.pad(m, (length - m.shape[1], 0)))
    return torch.cat(logits), torch.cat(masks)


def _distinct(rows: list[list[int]]) -> tuple[list[int], list[int]]:
    """The first place of each distinct row, and for every row the index of its distinct row:
    a prompt repeated in a batch (RL's group, the opponent's samples) is prefilled once."""
    first_of: dict[tuple, int] = {}
    inv = [first_of.setdefault(tuple(r), len(first_of)) for r in rows]
    first = [0] * len(first_of)
    for i in reversed(range(len(rows))):
        first[inv[i]] = i
    return first, inv


def _repeat_rows(cache, inv: torch.Tensor) -> None:
    """A growing cache's rows laid out again as ``inv`` picks them (the distinct prompts'
    keys and values given to every row that repeats them)."""
    for layer in cache.layers:
        layer.adopt([(layer.keys[inv], layer.values[inv])], layer.keys.shape[-2])


def decode_dropping_finished(model, ids: torch.Tensor, attn: torch.Tensor, cache, shared: int,
                             cfg: GenerationConfig, stop_ids: list[int], tokenizer=None,
                             stop_strings: list[str] | None = None,
                             gen: torch.Generator | None = None,
                             calculator: Callable[[str], str | None] | None = None
                             ) -> tuple[list[list[int]], list[bool]]:
    """Greedy or sampled decoding in which a row that has finished leaves the batch.

    HF ``generate`` decodes every row until the longest answer of the batch ends: a batch of 64
    short answers and one that runs to ``max_new_tokens`` costs 64 rows × max_new_tokens. On a
    CPU a decoding step costs in proportion to its rows, so here finished rows are removed from
    the batch (input, mask, positions and the KV cache, ``Cache.batch_select_indices``) once they
    are an eighth of it, and the work done is close to the tokens actually produced. Positions
    follow the attention mask as in HF ``generate`` (left padding, or padding after a shared
    prefix already in ``cache``). A prompt repeated in the batch is prefilled once, its rows
    given its keys and values (a growing cache). Returns each row's new tokens (up to and
    including its stop token or stop string) and whether it finished.

    ``calculator(text) -> str | None`` (``generation.calculator``): after a token that ends in
    ``=``, it gets the row's answer so far; the tokens of " value" it returns are then written
    for the row, one a step, in place of what the model would have chosen."""
    device = ids.device
    n = ids.shape[0]
    pos = (attn.long().cumsum(-1) - 1).clamp(min=0)
    st = _Rows(n, cfg, stop_ids, tokenizer, stop_strings, gen, calculator, device)
    rows = list(range(n))  # which original row each batch row is
    done = [False] * n
    # a prompt repeated in the batch (RL's group, the opponent's samples) is prefilled once and
    # its rows share its keys, values and logits; each row then samples on its own
    growing = bool(cache.layers) and all(hasattr(layer, "adopt") for layer in cache.layers)
    inv = None  # for every row, its distinct row: set only when some prompt repeats
    if growing and n > 1:  # rows of one batch are equal exactly where their prompts are
        first, rep = _distinct(ids.tolist())
        if len(first) < n:
            inv = torch.tensor(rep, dtype=torch.long, device=device)
            first = torch.tensor(first, dtype=torch.long, device=device)
            if shared:
                cache.batch_select_indices(first)
            ids, attn, pos = ids[first], attn[first], pos[first]
    if ids.shape[0] > PREFILL_ROWS and hasattr(cache.layers[0], "reserve"):
        logits, attn = prefill_in_chunks(model, ids, attn, pos, cache, shared, PREFILL_ROWS)
    else:
        logits = model(input_ids=ids[:, shared:], attention_mask=attn,
                       position_ids=pos[:, shared:], past_key_values=cache, use_cache=True,
                       logits_to_keep=1).logits[:, -1]
    if inv is not None:
        _repeat_rows(cache, inv)
        logits, attn, pos = logits[inv], attn[inv], pos[inv]
    next_pos = pos[:, -1] + 1
    for step in range(cfg.max_new_tokens):
        tok = st.take(rows, logits, done)
        live = [j for j in range(len(rows)) if not done[j]]
        # every live row has step + 1 tokens: the last step needs no forward pass after it
        if not live or step == cfg.max_new_tokens - 1:
            break
        if len(live) <= len(rows) * 7 // 8:  # an eighth finished: drop those rows
            sel = torch.tensor(live, dtype=torch.long, device=device)
            cache.batch_select_indices(sel)
            tok, attn, next_pos = tok[sel], attn[sel], next_pos[sel]
            rows, done = [rows[j] for j in live], [False] * len(live)
        attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)
        logits = model(input_ids=tok[:, None], attention_mask=attn,
                       position_ids=next_pos[:, None], past_key_values=cache,
                       use_cache=True).logits[:, -1]
        next_pos = next_pos + 1
    return st.out, st.finished


class _Rows:
    """What the decoding loops do with each step's logits: sample, let the calculator write its
    tokens, record tokens, notice stop tokens, stop strings and the length limit."""

    def __init__(self, n: int, cfg: GenerationConfig, stop_ids: list[int], tokenizer,
                 stop_strings: list[str] | None, gen: torch.Generator | None,
                 calculator: Callable[[str], str | None] | None, device: torch.device):
        self.cfg, self.tokenizer, self.stop_strings, self.gen = cfg, tokenizer, stop_strings, gen
        self.calculator = calculator
        self.stops = torch.tensor(sorted(set(stop_ids)) or [-1], device=device)
        self.longest = max((len(x) for x in stop_strings or []), default=0)
        self.equals = _equals_ids(tokenizer) if calculator else frozenset()
        self.forced: dict[int, list[int]] = {}  # row -> calculator tokens still to write
        self.out: list[list[int]] = [[] for _ in range(n)]
        self.finished = [False] * n
        self.ended = 0  # rows that have ended so far

    def take(self, rows: list[int], logits: torch.Tensor, done: list[bool]) -> torch.Tensor:
        """Next tokens of the batch rows (``rows[j]``: the prompt batch row j answers); marks in
        ``done`` the rows that ended at this token (stop token or string, or the length limit)."""
        tok = _sample(logits, self.cfg, self.gen)
        written = set()  # batch rows whose token is the calculator's this step
        if self.forced:
            tok = tok.clone()
            for j, r in enumerate(rows):
                if self.forced.get(r) and not done[j]:
                    tok[j] = self.forced[r].pop(0)
                    written.add(j)
        hit = torch.isin(tok, self.stops)
        for j, (t, h) in enumerate(zip(tok.tolist(), hit.tolist())):
            if done[j]:
                continue
            r = rows[j]
            out = self.out[r]
            out.append(t)
            if h or (self.stop_strings and any(
                    x in self.tokenizer.decode(out[-(self.longest + 2):], skip_special_tokens=True)
                    for x in self.stop_strings)):
                self.finished[r] = done[j] = True
                self.ended += 1
            elif len(out) >= self.cfg.max_new_tokens:
                done[j] = True
                self.ended += 1
            elif t in self.equals and j not in written:
                value = self.calculator(self.tokenizer.decode(out, skip_special_tokens=True))
                if value is not None:
                    self.forced[r] = self.tokenizer.encode(" " + value, add_special_tokens=False)
        return tok


def decode_continuous(model, tokenizer, prompts: list[list[int]], slots: int,
                      cfg: GenerationConfig, stop_ids: list[int],
                      stop_strings: list[str] | None = None,
                      gen: torch.Generator | None = None,
                      calculator: Callable[[str], str | None] | None = None,
                      min_shared: int = 16, on_done: Callable[[int], None] | None = None
                      ) -> tuple[list[list[int]], list[bool]]:
    """Continuous batching: ``slots`` rows decode together, and the slots of finished rows are
    refilled with the next prompts, so no step is spent on a batch that waits for its longest
    answer (HF ``generate``), nor on a batch that runs on with a few rows (``decode: drop``).

    Once an eighth of the slots have finished, as many new prompts are prefilled together (on a
    copy of the shared prefix's cache when the prompts share ``min_shared`` tokens or more: that
    prefix runs once per call; a prompt repeated among them runs once) and written into the
    finished rows' slots of the KV cache,
    right-aligned with the running rows (positions follow the attention mask, as in HF
    ``generate``); only their own keys and values are copied. Columns that no row attends any
    more are cut now and then, and when no prompt is left finished rows leave the batch.
    Returns each prompt's new tokens (up to and including its stop token or string) and whether
    it finished; greedy tokens are HF ``generate``'s (tested in fp32). ``on_done(k)``: k more
    prompts have their answers (a progress bar)."""
    from collections import deque

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    st = _Rows(len(prompts), cfg, stop_ids, tokenizer, stop_strings, gen, calculator, device)
    shared = common_prefix(prompts) if len(prompts) > 1 else 0
    shared = shared if shared >= min_shared else 0
    prefix = None
    if shared:  # the shared prefix runs once; each admission repeats its keys and values
        cache = growing_cache(model)
        model(input_ids=torch.tensor([prompts[0][:shared]], device=device),
              past_key_values=cache, use_cache=True, logits_to_keep=1)
        prefix = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    pending = deque(range(len(prompts)))
    rows: list[int] = []  # the prompt each batch row answers
    done: list[bool] = []  # finished, its slot free
    cache = tok = attn = next_pos = None
    reported = 0  # rows ended that on_done has been told of

    def admit(k: int):
        """Prefill the next k prompts; their cache, mask, next positions, first tokens, rows,
        and which of them ended at their first token."""
        idx = [pending.popleft() for _ in range(k)]
        # a prompt repeated in the batch (RL's group, the opponent's samples) runs once; its
        # rows share its keys, values and logits, each row then samples on its own
        first, inv = _distinct([prompts[i] for i in idx])
        batch = [prompts[idx[j]] for j in first]
        u = len(batch)
        ids, mask = _layout(batch, shared, max(len(p) for p in batch), pad)
        ids, mask = ids.to(device), mask.to(device)
        new = growing_cache(model)
        if prefix:
            for layer, (k_, v_) in zip(new.layers, prefix):
                layer.adopt([(k_.expand(u, -1, -1, -1), v_.expand(u, -1, -1, -1))], shared)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids[:, shared:], attention_mask=mask,
                       position_ids=pos[:, shared:], past_key_values=new, use_cache=True,
                       logits_to_keep=1).logits[:, -1]
        if u < k:
            sel = torch.tensor(inv, dtype=torch.long, device=device)
            _repeat_rows(new, sel)
            mask, pos, logits = mask[sel], pos[sel], logits[sel]
        ended = [False] * k
        first = st.take(idx, logits, ended)
        return new, mask, pos[:, -1] + 1, first, idx, ended

    def rebuild(keep: list[int], extra=None, lead: int = 0) -> None:
        """The cache rebuilt from the rows ``keep`` (and the admitted ``extra``), right-aligned,
        the first ``lead`` columns cut: one copy of what stays, made a layer at a time, so that
        each layer's old buffer goes before the next layer's copy is made (all layers' copies
        made first held the cache three times over: the demo's base-model evaluation, run
        alone, peaked 1.2 GB above ``decode: drop``'s; 0.4 GB with this)."""
        nonlocal cache, tok, attn, next_pos, rows, done
        sel = torch.tensor(keep, dtype=torch.long, device=device)
        masks = [attn[sel][:, lead:]]
        tok, next_pos = tok[sel], next_pos[sel]
        rows, done = [rows[j] for j in keep], [done[j] for j in keep]
        added = [None] * len(cache.layers)
        if extra is not None:
            new, mask, pos, first, idx, ended = extra
            masks.append(mask)
            added = [(layer.keys, layer.values) for layer in new.layers]
            tok, next_pos = torch.cat([tok, first]), torch.cat([next_pos, pos])
            rows, done = rows + idx, done + ended
        length = max(m.shape[1] for m in masks)
        attn = torch.cat([F.pad(m, (length - m.shape[1], 0)) for m in masks])
        for layer, add in zip(cache.layers, added):
            parts = [(layer.keys[sel][..., lead:, :], layer.values[sel][..., lead:, :])]
            layer.adopt(parts + ([add] if add is not None else []), length)

    while True:
        n_done = sum(done)
        if not rows:
            if not pending:
                break
            cache, attn, next_pos, tok, rows, done = admit(min(slots, len(pending)))
        elif pending and n_done >= max(1, slots // 8):
            free = [j for j in range(len(rows)) if done[j]]
            extra = admit(min(len(free), len(pending)))
            new, mask, pos, first, idx, ended = extra
            n, width = attn.shape[1], mask.shape[1]
            if width > n:  # the new prompts are longer than the cache: rebuild it wider
                rebuild([j for j in range(len(rows)) if not done[j]], extra)
            else:  # into the free slots, right-aligned: only the new rows' keys and values
                sl = torch.tensor(free[:len(idx)], dtype=torch.long, device=device)
                for layer, fresh in zip(cache.layers, new.layers):
                    for old, add in ((layer.keys, fresh.keys), (layer.values, fresh.values)):
                        block = old.new_zeros((len(idx), *old.shape[1:]))
                        block[:, :, n - width:] = add
                        old[sl] = block
                attn[sl] = F.pad(mask, (n - width, 0))
                next_pos[sl], tok[sl] = pos, first
                for j, i, e in zip(free, idx, ended):
                    rows[j], done[j] = i, e
                for j in free[len(idx):]:
                    done[j] = True
        elif n_done and (n_done == len(rows) or (not pending and n_done * 8 >= len(rows))):
            keep = [j for j in range(len(rows)) if not done[j]]
            if not keep:
                rows, done = [], []
                continue
            rebuild(keep)
        if on_done and st.ended > reported:
            on_done(st.ended - reported)
            reported = st.ended
        lead = int(attn.any(0).nonzero()[0])
        if lead >= 64:  # columns no row attends any more: cut them
            rebuild(list(range(len(rows))), lead=lead)
        if all(done):
            continue
        attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)
        logits = model(input_ids=tok[:, None], attention_mask=attn,
                       position_ids=next_pos[:, None], past_key_values=cache,
                       use_cache=True).logits[:, -1]
        next_pos = next_pos + 1
        tok = st.take(rows, logits, done)
    if on_done and st.ended > reported:
        on_done(st.ended - reported)
    return st.out, st.finished


def _equals_ids(tokenizer) -> frozenset[int]:
    """The token ids whose text ends in ``=`` (kept on the tokenizer after the first call)."""
    ids = getattr(tokenizer, "_spinlora_equals", None)
    if ids is None:
        ids = frozenset(i for i in range(len(tokenizer))
                        if tokenizer.decode([i]).rstrip().endswith("="))
        tokenizer._spinlora_equals = ids
    return ids


@dataclass
class Generation:
    ids: list[int]  # answer tokens, including the end token when the model produced one
    text: str
    finished: bool  # ended with an end-of-turn token (False: cut at max_new_tokens)


def free_memory(device: torch.device) -> int:
    """Bytes free for this process's work: CUDA's free memory, or the RAM Linux can give."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def auto_batch_size(model, prompts: list[list[int]], max_new_tokens: int, cap: int = 1024,
                    engine: str = "torch") -> int:
    """``generation.batch_size: auto``: the rows that half the free memory holds, each costing
    its KV cache at full length (2 · layers · kv heads · head dim · (longest prompt + new
    tokens), llama.cpp's rounded up as it allocates it) plus three fp32 rows of vocabulary
    logits per step; at least 1, at most ``cap``."""
    per_row = row_bytes(model, gen_row_tokens(engine, max(len(x) for x in prompts),
                                              max_new_tokens))
    return max(1, min(cap, free_memory(next(model.parameters()).device) // 2 // per_row))


def batch_rows(model, prompts: list[list[int]], cfg: GenerationConfig,
               engine: str = "torch") -> int:
    """Generation rows a call: ``generation.batch_size``, or ``auto_batch_size``'s where it is
    ``auto``."""
    if cfg.batch_size == "auto":
        return auto_batch_size(model, prompts, cfg.max_new_tokens, engine=engine)
    return cfg.batch_size


def gen_row_tokens(engine: str, prompt_tokens: int, new_tokens: int) -> int:
    """The KV cache length, in tokens, one generation row holds with ``engine``."""
    if engine == "llamacpp":
        from .llamacpp import slot_tokens

        return slot_tokens(prompt_tokens, new_tokens)
    return prompt_tokens + new_tokens


def row_bytes(model, length: int) -> int:
    """One generation row of ``length`` tokens (prompt + new): its KV cache at full length
    (2 · layers · kv heads · head dim · length · dtype bytes) and three fp32 rows of logits."""
    cfg = _text_config(model)
    p = next(model.parameters())
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return (2 * cfg.num_hidden_layers * heads * head_dim * length * p.element_size()
            + 3 * cfg.vocab_size * 4)


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """A linear layer's weight reordered once into oneDNN's blocked layout (``packed_product``)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, None)


def packed_product(x: torch.Tensor, packed: torch.Tensor,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` from ``pack_weight(weight)``."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _packed_forward(module, packed, x):
    if x.dtype != packed.dtype or (x.requires_grad and torch.is_grad_enabled()):
        return F.linear(x, module.weight, module.bias)
    return packed_product(x, packed, module.bias)


def _packable(m) -> bool:
    """Every ``nn.Linear`` in bf16 or fp32. bf16: ``F.linear`` reorders the weight on every
    call. fp32: MKL's product packs its weight operand on every call too, which a decoding
    step's few rows cannot pay back: on a 2-core AVX2 CPU, 90 weights of SmolLM2's 576 -> 1536
    shape, each multiplied once as in a step, took 63-68 ms at 4 rows against 32-35 from
    packed weights, 112-145 against 98-99 at 64 (``benchmarks/linear_products.py``;
    docs/precision.md)."""
    return type(m) is torch.nn.Linear and m.weight.dtype in (torch.bfloat16, torch.float32)


@cache
def can_pack(dtype: torch.dtype) -> bool:
    """Whether this torch and CPU reorder a ``dtype`` weight for oneDNN (bf16 needs the CPU's
    bf16 kernels: an AVX2-only CPU has none)."""
    if not (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    try:
        pack_weight(torch.zeros(8, 8, dtype=dtype))
    except RuntimeError:
        return False
    return True


def _packable_modules(model, cfg: GenerationConfig | None):
    """The linear layers ``packed_linears`` may pack (frozen or not: at load time every weight
    still requires grad), none where ``generation.packed`` is off or the model is not on a CPU."""
    if (cfg is not None and not cfg.packed) or next(model.parameters()).device.type != "cpu":
        return
    yield from (m for m in model.modules() if _packable(m) and can_pack(m.weight.dtype))


PACK_SHARE = 0.5  # the packed copy may take at most this share of the memory a run has left


def packed_copy_bytes(model, cfg: GenerationConfig | None = None) -> int:
    """Bytes of the copy ``packed_linears`` makes: the packable layers' weights."""
    return sum(m.weight.numel() * m.weight.element_size() for m in _packable_modules(model, cfg))


def decide_packing(model, room: int | None = None) -> bool:
    """Whether the packed copy fits: at most ``PACK_SHARE`` of the memory this run has left,
    the memory free now or ``room`` (what a memory budget leaves over the loaded model),
    whichever is less. Decided once per model, at its first call (a run makes it right after
    loading, with its budget), and kept on the model, so every ``generate`` call and
    ``run.json`` agree. Where it does not fit it says so and generation multiplies the plain
    weights (fp32: a 1.5B model's copy is ~6 GB)."""
    from .scoring import _lm

    owner = _lm(model)
    fits = getattr(owner, "_spinlora_pack_fits", None)
    if fits is None:
        need = packed_copy_bytes(model)
        have = free_memory(next(model.parameters()).device) if need else 0
        have = have if room is None else min(have, room)
        fits = need == 0 or need <= PACK_SHARE * have
        owner._spinlora_pack_fits, owner._spinlora_pack_bytes = fits, (need, have)
        if not fits:
            print(f"[spinlora] generation multiplies the plain weights: a oneDNN-packed copy of "
                  f"the frozen linear layers ({need / 2**30:.2f} GiB), which makes CPU decoding "
                  f"faster, would take over {int(PACK_SHARE * 100)} % of the "
                  f"{max(have, 0) / 2**30:.2f} GiB this run has left. Free memory (or raise "
                  "memory_budget) to have it; generation.packed=false says this choice yourself")
    return fits


def packing_skipped(model) -> dict | None:
    """``run.json["precision"]["packed_copy_skipped"]``: the copy's bytes and the room it did not
    fit in, where ``decide_packing`` turned it down; else None."""
    from .scoring import _lm

    owner = _lm(model)
    if getattr(owner, "_spinlora_pack_fits", True):
        return None
    need, have = owner._spinlora_pack_bytes
    return {"copy_bytes": need, "room_bytes": have, "share": PACK_SHARE}


def packs_linears(model, cfg: GenerationConfig | None = None) -> bool:
    """Whether ``generate`` runs frozen linear layers of this model from packed weights: a CPU
    model with oneDNN in bf16 or fp32, unless ``generation.packed`` is off or the copy does not
    fit (``decide_packing``; recorded in ``run.json["precision"]``)."""
    return any(True for _ in _packable_modules(model, cfg)) and decide_packing(model)


def packed_what(model, cfg: GenerationConfig | None = None) -> str:
    """``run.json["precision"]["generation_linears"]``: onednn_packed (every frozen linear
    layer; until session 27 an fp32 model packed its output head alone: onednn_packed_head) or
    plain."""
    return "onednn_packed" if packs_linears(model, cfg) else "plain"


@contextmanager
def packed_linears(model, cfg: GenerationConfig | None = None):
    """While generating, frozen linear layers of a CPU model (the base weights; an adapter's own
    matrices stay as they are) multiply from weights reordered once into oneDNN's blocked
    layout, as torch.compile's CPU "freezing" does, instead of through ``F.linear`` (which
    repacks the weight on every call; ``_packable``). bf16: at 1-64 rows a SmolLM2 layer runs
    15-45 % faster, its LM head ~40 %, the same products (checked equal). fp32: the SVAMP
    evaluations of the demo ~10 % faster on an AVX2 CPU, with products within fp32 rounding
    of MKL's, so a greedy token can differ where two logits tie to ~1e-5:
    ``generation.packed: false`` keeps every product bit-exact with transformers'. Costs one
    copy of those weights for the duration (SmolLM2: 270 MB in bf16, 540 MB in fp32), made only
    where it fits (``decide_packing``); yields how many layers were packed."""
    mods = [m for m in _packable_modules(model, cfg)
            if not m.weight.requires_grad and "forward" not in vars(m)
            ] if packs_linears(model, cfg) else []
    for m in mods:
        packed = pack_weight(m.weight.detach())
        m.forward = partial(_packed_forward, m, packed)
    try:
        yield len(mods)
    finally:
        for m in mods:
            del m.forward


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[list[int]], cfg: GenerationConfig, stop_ids: list[int],
             desc: str = "generate", stop_strings: list[str] | None = None,
             share_prefix: bool = True, min_shared: int = 16) -> tuple[list[Generation], int]:
    """Generate one answer per prompt (token ids). Returns (generations, new tokens produced).

    When a batch's prompts share a prefix of at least ``min_shared`` tokens (the k-shot examples
    of an evaluation prompt, a long system prompt), the prefix runs once and its KV cache is
    repeated for every row instead of being recomputed per prompt. On a CPU frozen linear
    layers run from prepacked weights (``packed_linears``)."""
    engine = pick_engine(model, cfg)
    if engine == "llamacpp":
        return _generate_llamacpp(model, tokenizer, prompts, cfg, stop_ids, desc, stop_strings)
    # a compiled (static-cache) decode step keeps its plain modules
    with decoding_heap():  # 4-32 MB blocks from the heap, not fresh mappings: no page faults
        try:
            with nullcontext() if cfg.cache == "static" else packed_linears(model, cfg):
                return _generate(model, tokenizer, prompts, cfg, stop_ids, desc, stop_strings,
                                 share_prefix, min_shared)
        finally:
            release_workspace()  # the fp32 upcasts of spinlora_cpu attention and greedy logits


def pick_engine(model, cfg: GenerationConfig) -> str:
    """``generation.engine``; ``llamacpp`` for a model it cannot run is an error that says why."""
    if cfg.engine == "torch":
        return "torch"
    from . import llamacpp

    why = llamacpp.supported(model, cfg)
    if why is not None:
        raise ValueError(f"generation.engine=llamacpp cannot run this model: {why}. "
                         "Use generation.engine=torch")
    return "llamacpp"


def _generate_llamacpp(model, tokenizer, prompts: list[list[int]], cfg: GenerationConfig,
                       stop_ids: list[int], desc: str, stop_strings: list[str] | None
                       ) -> tuple[list[Generation], int]:
    """``generate`` through llama.cpp: the base as a GGUF in the model's dtype, the LoRA as a
    llama.cpp adapter written from the live weights, continuous batching over ``batch_size``
    sequences (``llamacpp.Engine``)."""
    import tempfile

    from . import llamacpp

    p = next(model.parameters())
    path = llamacpp.engine_file(model)
    llamacpp.check_base(model, path)
    engine = llamacpp.Engine.get(path, torch.get_num_threads())
    size = batch_rows(model, prompts, cfg, engine="llamacpp")
    calculator = None
    if cfg.calculator:
        from .svamp import calculate as calculator
    gen = torch.Generator().manual_seed(cfg.seed) if cfg.do_sample else None
    st = _Rows(len(prompts), cfg, stop_ids, tokenizer, stop_strings, gen, calculator,
               torch.device("cpu"))
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", leave=False)
    with tempfile.TemporaryDirectory(prefix="spinlora-lora-") as tmp:
        lora = llamacpp.lora_gguf(model, Path(tmp) / "lora.gguf")
        engine.run(prompts, size, cfg, st, lora, kv_f32=p.dtype == torch.float32,
                   on_done=bar.update)
    bar.close()
    out = [Generation(t, tokenizer.decode(t, skip_special_tokens=True), f)
           for t, f in zip(st.out, st.finished)]
    return out, sum(len(t) for t in st.out)


def _generate(model, tokenizer, prompts: list[list[int]], cfg: GenerationConfig,
              stop_ids: list[int], desc: str, stop_strings: list[str] | None,
              share_prefix: bool, min_shared: int) -> tuple[list[Generation], int]:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    # peft's prompt-learning adapters feed their virtual tokens through generate's own cache
    prompt_learning = bool(getattr(getattr(model, "active_peft_config", None),
                                   "is_prompt_learning", False))
    out: list[Generation | None] = [None] * len(prompts)
    produced = 0
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", leave=False,
               disable=not dist.is_main())
    size = batch_rows(model, prompts, cfg)
    calculator = None
    if cfg.calculator:
        if prompt_learning or cfg.decode == "hf":
            raise ValueError("generation.calculator needs spinlora's decoding loop "
                             "(generation.decode=drop or continuous) and an adapter that is not "
                             "prompt learning")
        from .svamp import calculate as calculator
    static = use_static_cache(model, cfg, prompt_learning) and calculator is None
    if static:  # every batch the same number of rows: one compiled shape per width bucket
        size = min(size, len(prompts))
    if (cfg.decode == "continuous" and not static and not prompt_learning and dist.world() == 1
            and _full_attention(_text_config(model))):  # (what growing_cache needs)
        # the prompts in length order through one continuous batch of ``size`` slots. Several
        # processes keep batch-by-batch units (drop), so that every unit runs as in one process
        mine = order
        gen = None
        if cfg.do_sample:
            gen = torch.Generator(device=device).manual_seed(cfg.seed)
        if mine:
            toks_rows, fin = decode_continuous(
                model, tokenizer, [prompts[i] for i in mine], size, cfg, stop_ids, stop_strings,
                gen, calculator, min_shared if share_prefix else 1 << 30,
                on_done=lambda k: bar.update(k * dist.world()))
            for row, i in enumerate(mine):
                produced += len(toks_rows[row])
                out[i] = Generation(toks_rows[row], tokenizer.decode(
                    toks_rows[row], skip_special_tokens=True), fin[row])
        order = []  # nothing left for the batch loop
    for b, start in enumerate(range(0, len(order), size)):
        if not dist.mine(b):  # several processes: batch b is process b mod world's
            continue
        idx = order[start:start + size]
        batch = [prompts[i] for i in idx]
        if static and len(batch) < size:  # a short last batch runs filler rows, then drops them
            batch = batch + [batch[-1]] * (size - len(batch))
        shared = (common_prefix(batch) if share_prefix and not prompt_learning and not static
                  else 0)
        if shared < min_shared:
            shared = 0
        width = max(len(p) for p in batch)
        if static:
            width = _round_up(width, STATIC_WIDTH)
        ids, attn = _layout(batch, shared, width, pad)
        kwargs = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                      eos_token_id=stop_ids, pad_token_id=pad)
        if stop_strings:
            kwargs.update(stop_strings=stop_strings, tokenizer=tokenizer)
        if cfg.do_sample:
            kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
            torch.manual_seed(cfg.seed + b)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if static:
            from transformers import StaticCache

            cache = StaticCache(config=model.config,
                                max_cache_len=_round_up(width + cfg.max_new_tokens, STATIC_LENGTH))
        else:
            cache = None if prompt_learning else growing_cache(model)
        if shared:  # run the shared prefix once and repeat its KV cache for the batch
            from transformers import DynamicCache

            cache = cache if cache is not None else DynamicCache(config=model.config)
            model(input_ids=ids[:1, :shared].to(device), past_key_values=cache, use_cache=True,
                  logits_to_keep=1)
            cache.batch_repeat_interleave(len(idx))
        if (cache is not None and not static and not prompt_learning
                and cfg.decode in ("drop", "continuous")):
            gen = None
            if cfg.do_sample:
                gen = torch.Generator(device=device).manual_seed(cfg.seed + b)
            toks_rows, fin = decode_dropping_finished(
                model, ids.to(device), attn.to(device), cache, shared, cfg, stop_ids, tokenizer,
                stop_strings, gen, calculator)
            for row, i in enumerate(idx):
                produced += len(toks_rows[row])
                out[i] = Generation(toks_rows[row], tokenizer.decode(toks_rows[row],
                                                                     skip_special_tokens=True),
                                    fin[row])
            bar.update(len(idx) * dist.world())
            continue
        if cache is not None:
            kwargs["past_key_values"] = cache
        try:
            seqs = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                                  **kwargs)
        except _compile_errors() as e:
            if not static:
                raise
            # compiling the decode step failed (a model or adapter torch.compile cannot trace):
            # the eager dynamic cache gives the same answers, only slower
            print(f"[spinlora] generation.cache=static: compiling the decode step failed "
                  f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                  "going on with the dynamic cache (set generation.cache=dynamic to skip this)")
            static = False  # (static implies full attention: the growing cache applies)
            kwargs["past_key_values"] = growing_cache(model)
            seqs = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                                  **kwargs)
        new = seqs[:, width:].tolist()
        ends = [*stop_ids, *([pad] if stop_strings else [])]  # pad after a stop string
        for row, i in enumerate(idx):
            toks, finished = _until_stop(new[row], ends)
            produced += len(toks)
            text = tokenizer.decode(toks, skip_special_tokens=True)
            out[i] = Generation(toks, text, finished)
        bar.update(len(idx) * dist.world())
    bar.close()
    if was_training:
        model.train()
    if dist.world() > 1:
        out = dist.gather({i: g for i, g in enumerate(out) if g is not None}, len(prompts))
        produced = int(dist.sum_floats([produced])[0])
    return out, produced


@torch.inference_mode()
def beam_answers(model, tokenizer, prompts: list[list[int]], cfg: GenerationConfig,
                 stop_ids: list[int], beams: int, batch: int | None = None,
                 desc: str = "beams") -> tuple[list[list[Generation]], int]:
    """The ``beams`` answers of a beam search over each prompt (transformers' ``generate``,
    deterministic, length penalty 1), best first by its score; ``batch`` prompts (left-padded,
    in length order) a call, by default ``generation.batch_size`` rows (``auto``: the rows
    memory holds, as for ``generate``) over ``beams`` rows a prompt. Returns (answers per
    prompt, new tokens in all of them).
    ``eval.checked_beams`` decodes again this way the greedy answers that fail its check.
    Under several processes call ``k`` is process ``k mod world``'s, as ``generate``'s
    batches are, and every process gets all the answers."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    if batch is None:
        batch = max(1, batch_rows(model, prompts, cfg) // beams)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[Generation]] = [[] for _ in prompts]
    produced = 0
    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", leave=False,
               disable=not dist.is_main())
    try:
        for k, b in enumerate(range(0, len(order), batch)):
            idx = order[b:b + batch]
            if not dist.mine(k):
                continue
            width = max(len(prompts[i]) for i in idx)
            ids, attn = _layout([prompts[i] for i in idx], 0, width, pad)
            seqs = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                                  num_beams=beams,
                                  num_return_sequences=beams, do_sample=False,
                                  early_stopping=True, max_new_tokens=cfg.max_new_tokens,
                                  eos_token_id=stop_ids, pad_token_id=pad,
                                  temperature=None, top_p=None, top_k=None)
            for r, row in enumerate(seqs[:, width:].tolist()):
                toks, finished = _until_stop(row, stop_ids)
                produced += len(toks)
                out[idx[r // beams]].append(
                    Generation(toks, tokenizer.decode(toks, skip_special_tokens=True), finished))
            bar.update(len(idx) * dist.world())
    finally:
        bar.close()
        if was_training:
            model.train()
    if dist.world() > 1:
        out = dist.gather({i: a for i, a in enumerate(out) if a}, len(prompts))
        produced = int(dist.sum_floats([produced])[0])
    return out, produced
