"""Batched generation with the KV cache, for the SPIN opponent and for evaluation.

Prompts are sorted by length and cut into batches, so a batch holds prompts of similar length and
left padding stays small; results come back in the caller's order. Each result records whether
the answer ended with an end-of-turn token or was cut at ``max_new_tokens``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from . import dist
from .config import GenerationConfig


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


def _common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest common prefix, leaving at least one token of every sequence."""
    limit = min(len(s) for s in seqs) - 1
    n = 0
    while n < limit and all(s[n] == seqs[0][n] for s in seqs):
        n += 1
    return n


def _sample(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator | None) -> torch.Tensor:
    """The next token of every row: argmax (greedy), or a draw from softmax(logits / T) cut to
    the top-p nucleus (HF's TemperatureLogitsWarper + TopPLogitsWarper, top_k off)."""
    if not cfg.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / max(cfg.temperature, 1e-6), dim=-1)
    if cfg.top_p < 1.0:
        sorted_p, idx = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > cfg.top_p  # keeps the token that crosses top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, idx, sorted_p)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def decode_dropping_finished(model, ids: torch.Tensor, attn: torch.Tensor, cache, shared: int,
                             cfg: GenerationConfig, stop_ids: list[int], tokenizer=None,
                             stop_strings: list[str] | None = None,
                             gen: torch.Generator | None = None
                             ) -> tuple[list[list[int]], list[bool]]:
    """Greedy or sampled decoding in which a row that has finished leaves the batch.

    HF ``generate`` decodes every row until the longest answer of the batch ends: a batch of 64
    short answers and one that runs to ``max_new_tokens`` costs 64 rows × max_new_tokens. On a
    CPU a decoding step costs in proportion to its rows, so here finished rows are removed from
    the batch (input, mask, positions and the KV cache, ``Cache.batch_select_indices``) once they
    are an eighth of it, and the work done is close to the tokens actually produced. Positions
    follow the attention mask as in HF ``generate`` (left padding, or padding after a shared
    prefix already in ``cache``). Returns each row's new tokens (up to and including its stop
    token or stop string) and whether it finished."""
    device = ids.device
    n = ids.shape[0]
    pos = (attn.long().cumsum(-1) - 1).clamp(min=0)
    stops = torch.tensor(sorted(set(stop_ids)), device=device)
    out: list[list[int]] = [[] for _ in range(n)]
    finished = [False] * n
    rows = torch.arange(n, device=device)  # which original row each batch row is
    done_in_batch = torch.zeros(n, dtype=torch.bool, device=device)
    longest = max((len(s) for s in stop_strings or []), default=0)
    logits = model(input_ids=ids[:, shared:], attention_mask=attn, position_ids=pos[:, shared:],
                   past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    next_pos = pos[:, -1] + 1
    for step in range(cfg.max_new_tokens):
        tok = _sample(logits, cfg, gen)
        hit = torch.isin(tok, stops)
        for j, (t, h) in enumerate(zip(tok.tolist(), hit.tolist())):
            if done_in_batch[j]:
                continue
            r = int(rows[j])
            out[r].append(t)
            if h or (stop_strings and any(
                    s in tokenizer.decode(out[r][-(longest + 2):], skip_special_tokens=True)
                    for s in stop_strings)):
                finished[r] = True
                done_in_batch[j] = True
        live = (~done_in_batch).nonzero().squeeze(-1)
        # every live row has step + 1 tokens: the last step needs no forward pass after it
        if live.numel() == 0 or step == cfg.max_new_tokens - 1:
            break
        if len(live) <= len(rows) * 7 // 8:  # an eighth finished: drop those rows
            cache.batch_select_indices(live)
            rows, tok, attn, next_pos = rows[live], tok[live], attn[live], next_pos[live]
            done_in_batch = done_in_batch[live]
        attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)
        logits = model(input_ids=tok[:, None], attention_mask=attn,
                       position_ids=next_pos[:, None], past_key_values=cache,
                       use_cache=True).logits[:, -1]
        next_pos = next_pos + 1
    return out, finished


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


def auto_batch_size(model, prompts: list[list[int]], max_new_tokens: int, cap: int = 1024) -> int:
    """``generation.batch_size: auto``: the rows that half the free memory holds, each costing
    its KV cache at full length (2 · layers · kv heads · head dim · (longest prompt + new
    tokens)) plus three fp32 rows of vocabulary logits per step; at least 1, at most ``cap``."""
    per_row = row_bytes(model, max(len(x) for x in prompts) + max_new_tokens)
    return max(1, min(cap, free_memory(next(model.parameters()).device) // 2 // per_row))


def row_bytes(model, length: int) -> int:
    """One generation row of ``length`` tokens (prompt + new): its KV cache at full length
    (2 · layers · kv heads · head dim · length · dtype bytes) and three fp32 rows of logits."""
    cfg = _text_config(model)
    p = next(model.parameters())
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return (2 * cfg.num_hidden_layers * heads * head_dim * length * p.element_size()
            + 3 * cfg.vocab_size * 4)


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[list[int]], cfg: GenerationConfig, stop_ids: list[int],
             desc: str = "generate", stop_strings: list[str] | None = None,
             share_prefix: bool = True, min_shared: int = 16) -> tuple[list[Generation], int]:
    """Generate one answer per prompt (token ids). Returns (generations, new tokens produced).

    When a batch's prompts share a prefix of at least ``min_shared`` tokens (the k-shot examples
    of an evaluation prompt, a long system prompt), the prefix runs once and its KV cache is
    repeated for every row instead of being recomputed per prompt.
    """
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
    size = (auto_batch_size(model, prompts, cfg.max_new_tokens) if cfg.batch_size == "auto"
            else cfg.batch_size)
    static = use_static_cache(model, cfg, prompt_learning)
    if static:  # every batch the same number of rows: one compiled shape per width bucket
        size = min(size, len(prompts))
    for b, start in enumerate(range(0, len(order), size)):
        if not dist.mine(b):  # several processes: batch b is process b mod world's
            continue
        idx = order[start:start + size]
        batch = [prompts[i] for i in idx]
        if static and len(batch) < size:  # a short last batch runs filler rows, then drops them
            batch = batch + [batch[-1]] * (size - len(batch))
        shared = (_common_prefix(batch) if share_prefix and not prompt_learning and not static
                  else 0)
        if shared < min_shared:
            shared = 0
        width = max(len(p) for p in batch)
        if static:
            width = _round_up(width, STATIC_WIDTH)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attn = torch.zeros((len(batch), width), dtype=torch.long)
        for row, p in enumerate(batch):
            # padding goes after the shared prefix (before it when there is none): every prompt
            # ends where generation starts, and positions follow the attention mask
            ids[row, :shared] = torch.tensor(p[:shared])
            attn[row, :shared] = 1
            ids[row, width - len(p) + shared:] = torch.tensor(p[shared:])
            attn[row, width - len(p) + shared:] = 1
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
        if cache is not None and not static and not prompt_learning and cfg.decode == "drop":
            gen = None
            if cfg.do_sample:
                gen = torch.Generator(device=device).manual_seed(cfg.seed + b)
            toks_rows, fin = decode_dropping_finished(
                model, ids.to(device), attn.to(device), cache, shared, cfg, stop_ids, tokenizer,
                stop_strings, gen)
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
        for row, i in enumerate(idx):
            toks, finished = [], False
            for t in new[row]:
                toks.append(t)
                if t in stop_ids or (t == pad and stop_strings):  # pad after a stop string
                    finished = True
                    break
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
