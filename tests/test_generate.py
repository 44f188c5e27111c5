"""Batched generation: the in-place KV cache gives exactly transformers' default result."""
import pytest
import torch

from spinlora.config import GenerationConfig
from spinlora.generate import generate, growing_cache


def test_growing_cache_matches_default_cache(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(3, 100, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    kw = dict(max_new_tokens=300, min_new_tokens=300, do_sample=False, pad_token_id=2)
    with torch.no_grad():
        ref = model.generate(input_ids=ids, attention_mask=mask, **kw)
        ours = model.generate(input_ids=ids, attention_mask=mask,
                              past_key_values=growing_cache(model), **kw)  # > one 256 chunk
    assert torch.equal(ref, ours)


def test_dropping_rows_lets_the_old_cache_buffer_go(tiny_model_dir):
    """Selecting rows frees each layer's old buffer at once (else every layer holds it beside its
    selected copy until the next step: twice the cache), and the cache keeps growing right."""
    import weakref

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    cache = growing_cache(model)
    k, v = torch.randn(4, 2, 5, 8), torch.randn(4, 2, 5, 8)
    layer = cache.layers[0]
    layer.update(k, v)
    old = weakref.ref(layer._kbuf)
    cache.batch_select_indices(torch.tensor([1, 3]))
    assert old() is None, "the pre-selection buffer is still referenced"
    k2, v2 = torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 8)
    keys, values = layer.update(k2, v2)
    assert torch.equal(keys, torch.cat([k[[1, 3]], k2], 2))
    assert torch.equal(values, torch.cat([v[[1, 3]], v2], 2))


def test_generate_keeps_caller_order_and_flags_unfinished(tiny_model_dir):
    from spinlora.models import load_tokenizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    prompts = [[1, 5, 6, 7, 8, 9], [1, 5], [1, 5, 6, 7]]
    cfg = GenerationConfig(max_new_tokens=5, batch_size=8)
    gens, n = generate(model, tok, prompts, cfg, stop_ids=[2])
    singles = [generate(model, tok, [p], cfg, stop_ids=[2])[0][0] for p in prompts]
    assert [g.ids for g in gens] == [s.ids for s in singles]
    assert n == sum(len(g.ids) for g in gens)
    for g in gens:
        assert g.finished == (g.ids[-1] == 2) and (g.finished or len(g.ids) == 5)


def test_shared_prefix_runs_once_and_gives_the_same_tokens(tiny_model_dir):
    from spinlora.models import load_tokenizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    shots = list(range(10, 50))  # a 40-token "few-shot" prefix
    prompts = [shots + [60, 61, 62], shots + [70], shots + [80, 81, 82, 83, 84, 85]]
    cfg = GenerationConfig(max_new_tokens=12, batch_size=8)
    seen = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, a, o: seen.append(a[0].shape))
    shared, _ = generate(model, tok, prompts, cfg, stop_ids=[2], min_shared=32)
    hook.remove()
    assert seen[0] == (1, 40)  # the prefix alone, once
    assert seen[1] == (3, 6)  # then only the differing parts, middle-padded
    plain, _ = generate(model, tok, prompts, cfg, stop_ids=[2], share_prefix=False)
    singles = [generate(model, tok, [p], cfg, stop_ids=[2], share_prefix=False)[0][0]
               for p in prompts]
    assert [g.ids for g in shared] == [g.ids for g in plain] == [g.ids for g in singles]


def test_auto_batch_size_follows_free_memory(tiny_model_dir, monkeypatch):
    """generation.batch_size=auto: rows = half the free memory / (KV cache + logits) per row,
    so less memory means smaller batches, and generation gives the same answers."""
    from transformers import AutoModelForCausalLM

    import spinlora.generate as g
    from spinlora.config import GenerationConfig
    from spinlora.data import ChatFormat
    from spinlora.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    fmt = ChatFormat(tok)
    prompts = [fmt.prompt_ids(f"{i}+{i}?") for i in range(6)]
    c = model.config
    per_row = (2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
               * (max(map(len, prompts)) + 8) * 4 + 3 * c.vocab_size * 4)
    monkeypatch.setattr(g, "free_memory", lambda device: 2 * 4 * per_row)
    assert g.auto_batch_size(model, prompts, 8) == 4
    monkeypatch.setattr(g, "free_memory", lambda device: 2 * per_row)
    assert g.auto_batch_size(model, prompts, 8) == 1
    fixed, _ = g.generate(model, tok, prompts, GenerationConfig(max_new_tokens=8, batch_size=2),
                          fmt.stop_ids)
    auto, _ = g.generate(model, tok, prompts, GenerationConfig(max_new_tokens=8, batch_size="auto"),
                         fmt.stop_ids)
    assert [x.ids for x in auto] == [x.ids for x in fixed]


def test_static_cache_gives_the_dynamic_caches_tokens(tiny_model_dir):
    """generation.cache=static (what auto picks on CUDA, where transformers compiles the decode
    step): widths bucketed, a short last batch filled with rows that are dropped, the same
    greedy tokens in the caller's order; auto stays dynamic on CPU."""
    from spinlora.generate import use_static_cache
    from spinlora.models import load_tokenizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    g = torch.Generator().manual_seed(0)
    prompts = [[1] + torch.randint(3, 100, (n,), generator=g).tolist() for n in (9, 3, 70, 5, 12)]
    seen = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, a, o: seen.append(a[0].shape))
    static, n_static = generate(model, tok, prompts, GenerationConfig(
        max_new_tokens=20, batch_size=2, cache="static"), stop_ids=[2])
    hook.remove()
    dynamic, n_dynamic = generate(model, tok, prompts, GenerationConfig(
        max_new_tokens=20, batch_size=2, cache="dynamic"), stop_ids=[2])
    assert [x.ids for x in static] == [x.ids for x in dynamic] and n_static == n_dynamic
    assert [x.finished for x in static] == [x.finished for x in dynamic]
    prefills = [s for s in seen if s[1] > 1]
    assert [s[0] for s in prefills] == [2, 2, 2]  # 5 prompts in batches of 2: the last filled
    assert {s[1] for s in prefills} == {64, 128}  # widths in buckets of 64
    assert not use_static_cache(model, GenerationConfig(cache="auto"))  # a CPU model
    assert use_static_cache(model, GenerationConfig(cache="static"))


def test_static_cache_falls_back_when_compiling_fails(tiny_model_dir, monkeypatch, capsys):
    """A decode step torch.compile cannot compile costs speed, not the run: the batch is redone
    on the dynamic cache, with a message, and later batches stay there."""
    from torch._dynamo.exc import BackendCompilerFailed
    from transformers import AutoModelForCausalLM, StaticCache

    from spinlora.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    prompts = [[1, 5, 6, 7], [1, 8], [1, 9, 9, 9, 9, 9], [1, 4, 4]]
    cfg = GenerationConfig(max_new_tokens=6, batch_size=2, cache="dynamic")
    want, _ = generate(model, tok, prompts, cfg, stop_ids=[2])
    real, calls = model.generate, []

    def failing(*a, **kw):
        calls.append(type(kw.get("past_key_values")).__name__)
        if isinstance(kw.get("past_key_values"), StaticCache):
            raise BackendCompilerFailed("inductor", RuntimeError("cannot trace this"), None)
        return real(*a, **kw)

    monkeypatch.setattr(model, "generate", failing)
    cfg.cache = "static"
    got, _ = generate(model, tok, prompts, cfg, stop_ids=[2])
    assert [g.ids for g in got] == [g.ids for g in want]
    # one failure, the batch redone on the dynamic cache; later batches stay dynamic (through
    # spinlora's own decoding loop, generation.decode=drop: no model.generate call)
    assert calls == ["StaticCache", "Cache"]
    assert "compiling the decode step failed" in capsys.readouterr().out


def test_static_cache_with_stop_strings_and_a_shared_prefix(tiny_model_dir):
    """The static cache under the evaluation's stop strings (k-shot GSM8K) and on prompts with a
    shared prefix (which it runs in full): the dynamic cache's tokens and finished flags."""
    from spinlora.models import load_tokenizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    g = torch.Generator().manual_seed(1)
    prompts = [[1] + torch.randint(3, 100, (n,), generator=g).tolist() for n in (9, 3, 40, 5, 12)]
    shots = list(range(10, 50))
    prompts += [shots + [60, 61], shots + [70], shots + [80, 81, 82]]
    got = {}
    for cache in ("static", "dynamic"):
        got[cache], _ = generate(model, tok, prompts, GenerationConfig(
            max_new_tokens=30, batch_size=3, cache=cache, decode="hf"), stop_ids=[2],
            stop_strings=["AA", "cc"],
            min_shared=32)
    assert [x.ids for x in got["static"]] == [x.ids for x in got["dynamic"]]
    assert [x.finished for x in got["static"]] == [x.finished for x in got["dynamic"]]
    assert any(x.finished for x in got["static"])  # some answers did stop at a stop string


def _hf_reference(tiny_model_dir):
    """The tiny model, 16 prompts of 3-12 tokens, HF generate's config, stop tokens that end
    rows at different steps, and HF generate's answers (and token count) with them."""
    from spinlora.models import load_tokenizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(1)
    prompts = [[1] + torch.randint(3, 100, (int(k),)).tolist() for k in torch.randint(2, 12, (16,))]
    hf = GenerationConfig(max_new_tokens=40, batch_size=16, decode="hf")
    ref, _ = generate(model, tok, prompts, hf, stop_ids=[2])
    stops = sorted({g.ids[k] for g, k in zip(ref, (3, 9, 17, 25))})
    ref, n_ref = generate(model, tok, prompts, hf, stop_ids=stops)
    return model, tok, prompts, hf, stops, ref, n_ref


def _prefix_and_stop_string_match_hf(model, tok, prompts, hf, stops, ref, ours):
    """``ours`` gives HF generate's tokens with a 40-token shared prefix (run once) and, where
    the reference text allows one, with a two-character stop string; returns the answers with
    the stop string and the string (None, None without one)."""
    pre = [list(range(10, 50)) + p for p in prompts[:6]]
    a, _ = generate(model, tok, pre, hf, stop_ids=stops, min_shared=32)
    b, _ = generate(model, tok, pre, ours, stop_ids=stops, min_shared=32)
    assert [g.ids for g in a] == [g.ids for g in b]
    text = ref[0].text
    stop = text[len(text) // 2: len(text) // 2 + 2]
    if not stop.strip():
        return None, None
    a, _ = generate(model, tok, prompts[:4], hf, stop_ids=[2], stop_strings=[stop])
    b, _ = generate(model, tok, prompts[:4], ours, stop_ids=[2], stop_strings=[stop])
    assert [g.text.split(stop)[0] for g in a] == [g.text.split(stop)[0] for g in b]
    return b, stop


def test_finished_rows_leave_the_batch_and_tokens_stay_hfs(tiny_model_dir):
    """generation.decode=drop (spinlora's loop: a finished row leaves the batch) gives HF
    generate's tokens, greedy in fp32, while later decoding steps run on fewer rows; with a
    shared prefix and with stop strings too."""
    import dataclasses

    model, tok, prompts, hf, stops, ref, n_ref = _hf_reference(tiny_model_dir)
    rows_seen = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda m, a, o: rows_seen.append(a[0].shape[0]))
    ours, n_ours = generate(model, tok, prompts, dataclasses.replace(hf, decode="drop"),
                            stop_ids=stops)
    hook.remove()
    assert [g.ids for g in ours] == [g.ids for g in ref] and n_ours == n_ref
    assert [g.finished for g in ours] == [g.finished for g in ref]
    assert any(g.finished for g in ours) and not all(g.finished for g in ours)
    assert rows_seen[0] == 16 and min(rows_seen) < 16  # the batch shrank as rows finished
    assert sum(rows_seen[1:]) < 16 * (len(rows_seen) - 1)
    # a shared prefix already in the cache, and stop strings
    b, stop = _prefix_and_stop_string_match_hf(model, tok, prompts, hf, stops, ref,
                                               dataclasses.replace(hf, decode="drop"))
    if b is not None:
        assert b[0].finished and stop in b[0].text


@pytest.mark.parametrize("shared", [0, 6])
def test_prefill_in_chunks_gives_the_whole_prefills_logits_and_cache(tiny_model_dir, shared):
    """prefill_in_chunks against one prefill pass over the whole batch: the same last logits,
    and a decoding step on its cache and mask gives the same logits too (keys and values placed
    where its mask says)."""
    from transformers import AutoModelForCausalLM

    from spinlora.generate import _layout, prefill_in_chunks

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    g = torch.Generator().manual_seed(3)
    head = list(range(10, 10 + shared))
    prompts = sorted((head + torch.randint(3, 100, (k,), generator=g).tolist()
                      for k in (2, 3, 3, 5, 9, 14, 20)), key=len)
    ids, attn = _layout(prompts, shared, max(map(len, prompts)), 0)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    nxt = torch.randint(3, 100, (len(prompts), 1), generator=g)

    def prefix_cache():
        cache = growing_cache(model)
        if shared:
            model(input_ids=ids[:1, :shared], past_key_values=cache, use_cache=True)
            cache.batch_repeat_interleave(len(prompts))
        return cache

    with torch.no_grad():
        whole = prefix_cache()
        a = model(input_ids=ids[:, shared:], attention_mask=attn, position_ids=pos[:, shared:],
                  past_key_values=whole, use_cache=True).logits[:, -1]
        a2 = model(input_ids=nxt, attention_mask=torch.cat([attn, torch.ones_like(nxt)], 1),
                   position_ids=pos[:, -1:] + 1, past_key_values=whole).logits[:, -1]
        chunked = prefix_cache()
        b, mask = prefill_in_chunks(model, ids, attn, pos, chunked, shared, rows=3)
        b2 = model(input_ids=nxt, attention_mask=torch.cat([mask, torch.ones_like(nxt)], 1),
                   position_ids=pos[:, -1:] + 1, past_key_values=chunked).logits[:, -1]
    assert mask.shape == attn.shape
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a2, b2, atol=1e-5)


def test_prefill_in_chunks_keeps_hfs_tokens(tiny_model_dir, monkeypatch):
    """A decoding batch larger than PREFILL_ROWS is prefilled a chunk at a time (each chunk
    padded to its own longest prompt) into one cache: HF generate's tokens, with and without a
    shared prefix, and no prefill pass over more rows than a chunk."""
    import dataclasses

    import spinlora.generate as G

    model, tok, prompts, hf, stops, ref, n_ref = _hf_reference(tiny_model_dir)
    monkeypatch.setattr(G, "PREFILL_ROWS", 5)
    widths = []  # (rows, tokens) of every pass with more than one token a row: prefills
    hook = model.model.embed_tokens.register_forward_hook(
        lambda m, a, o: widths.append(tuple(a[0].shape)) if a[0].shape[1] > 1 else None)
    drop = dataclasses.replace(hf, decode="drop")
    ours, n_ours = generate(model, tok, prompts, drop, stop_ids=stops)
    hook.remove()
    assert [g.ids for g in ours] == [g.ids for g in ref] and n_ours == n_ref
    assert [g.finished for g in ours] == [g.finished for g in ref]
    assert [r for r, _ in widths] == [5, 5, 5, 1]  # 16 prompts: chunks of 5
    longest = max(len(p) for p in prompts)
    assert min(w for _, w in widths) < longest  # the short prompts' chunk was not padded
    _prefix_and_stop_string_match_hf(model, tok, prompts, hf, stops, ref, drop)


def test_sampled_decoding_is_seeded(tiny_model_dir):
    """decode=drop samples from softmax(logits / T) with the batch's seed: the same seed gives
    the same answers, another seed others."""
    from spinlora.models import load_tokenizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    prompts = [[1, 5, 6, 7], [1, 8, 9], [1, 10]]
    cfg = GenerationConfig(max_new_tokens=20, do_sample=True, temperature=1.0, top_p=0.9, seed=3)
    a, _ = generate(model, tok, prompts, cfg, stop_ids=[2])
    b, _ = generate(model, tok, prompts, cfg, stop_ids=[2])
    c, _ = generate(model, tok, prompts, GenerationConfig(**{**cfg.__dict__, "seed": 4}),
                    stop_ids=[2])
    assert [g.ids for g in a] == [g.ids for g in b] != [g.ids for g in c]


def test_calculator_writes_its_value_in_place_of_the_models_tokens(tiny_model_dir, monkeypatch):
    """generation.calculator: after a token ending in "=", the calculator gets the answer so far
    and the tokens of " value" are written for the row, then the model goes on. Here every
    token counts as "=" and the calculator always says 42, so each row reads x, " 42", y, " 42"."""
    import spinlora.generate as G
    import spinlora.svamp as S
    from spinlora.models import load_tokenizer
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    monkeypatch.setattr(G, "_equals_ids", lambda t: frozenset(range(len(t))))
    seen = []
    monkeypatch.setattr(S, "calculate", lambda text: seen.append(text) or "42")
    forced = tok.encode(" 42", add_special_tokens=False)
    prompts = [[1, 5, 6, 7, 8, 9], [1, 5], [1, 5, 6, 7]]
    n = 2 * (len(forced) + 1)
    cfg = GenerationConfig(max_new_tokens=n, batch_size=8, calculator=True)
    plain, _ = generate(model, tok, prompts, GenerationConfig(max_new_tokens=n, batch_size=8),
                        stop_ids=[2])
    gens, _ = generate(model, tok, prompts, cfg, stop_ids=[])
    assert seen
    for p, g in zip(plain, gens):
        assert g.ids[0] == p.ids[0]  # the model's own first token
        assert g.ids[1:1 + len(forced)] == forced
        assert g.ids[2 + len(forced):] == forced
    with pytest.raises(ValueError, match="decode=drop"):
        generate(model, tok, prompts, GenerationConfig(calculator=True, decode="hf"), [2])


def test_continuous_batching_cuts_columns_and_keeps_hfs_tokens(tiny_model_dir, monkeypatch):
    """Long answers (120 new tokens) in 4 slots for 16 prompts: the cache is rebuilt a layer at
    a time when rows leave and when 64 or more of its first columns are no longer attended
    (cut), and every greedy answer is still HF generate's."""
    import dataclasses

    from spinlora import generate as gen_mod

    model, tok, prompts, hf, stops, _, _ = _hf_reference(tiny_model_dir)
    hf = dataclasses.replace(hf, max_new_tokens=120)
    ref, n_ref = generate(model, tok, prompts, hf, stop_ids=stops)
    made, seen = gen_mod.growing_cache, []

    def recorded(model):  # each layer's adopt records its width before and after
        cache = made(model)
        for layer in cache.layers:
            def adopt(parts, length, layer=layer, inner=layer.adopt):
                seen.append((layer.keys.shape[-2], length))
                return inner(parts, length)
            layer.adopt = adopt
        return cache

    monkeypatch.setattr(gen_mod, "growing_cache", recorded)
    cont = GenerationConfig(max_new_tokens=120, batch_size=4, decode="continuous")
    ours, n_ours = generate(model, tok, prompts, cont, stop_ids=stops)
    assert [g.ids for g in ours] == [g.ids for g in ref] and n_ours == n_ref
    assert any(before - after >= 64 for before, after in seen)  # columns were cut


def test_continuous_batching_refills_slots_and_keeps_hfs_tokens(tiny_model_dir):
    """generation.decode=continuous: 4 slots for 16 prompts; a finished row's slot takes the
    next prompt (later prefills have fewer rows than the slots), and every answer is HF
    generate's, greedy in fp32: with stop tokens ending rows at different steps, a shared
    prefix, stop strings and sampling by seed."""
    import dataclasses

    model, tok, prompts, hf, stops, ref, n_ref = _hf_reference(tiny_model_dir)
    cont = GenerationConfig(max_new_tokens=40, batch_size=4, decode="continuous")
    ours, n_ours = generate(model, tok, prompts, cont, stop_ids=stops)
    assert [g.ids for g in ours] == [g.ids for g in ref] and n_ours == n_ref
    assert [g.finished for g in ours] == [g.finished for g in ref]
    # sampled answers end at scattered steps (5 stop tokens of ~100): slots refill one by one
    calls = []
    hook = model.model.embed_tokens.register_forward_hook(
        lambda m, a, o: calls.append(tuple(a[0].shape)))
    sampled = dataclasses.replace(cont, do_sample=True, temperature=1.0, seed=3)
    x, _ = generate(model, tok, prompts, sampled, stop_ids=list(range(20, 25)))
    hook.remove()
    prefills = [c for c in calls if c[1] > 1]
    assert len({len(g.ids) for g in x}) > 4
    assert max(c[0] for c in calls) <= 4  # never more rows than slots
    assert any(c[0] < 4 for c in prefills[:-1])  # a slot refilled while the others ran on
    # a shared prefix (run once, copied into each admission), and stop strings
    _prefix_and_stop_string_match_hf(model, tok, prompts, hf, stops, ref,
                                     dataclasses.replace(cont, batch_size=2))
    y, _ = generate(model, tok, prompts, sampled, stop_ids=list(range(20, 25)))
    z, _ = generate(model, tok, prompts, dataclasses.replace(sampled, seed=4),
                    stop_ids=list(range(20, 25)))
    assert [g.ids for g in x] == [g.ids for g in y] != [g.ids for g in z]


def test_generate_decodes_under_the_decoding_heap(tiny_model_dir, monkeypatch):
    """In a run (its mmap threshold fixed) ``generate`` decodes with ``decoding_heap``'s
    settings in force (no fresh mapping per 4-32 MB block) and restores the run's after."""
    from spinlora import accounting, generate as gen_mod
    from spinlora.models import load_tokenizer
    from transformers import AutoModelForCausalLM

    for k in accounting.MALLOC_ENV:
        monkeypatch.delenv(k, raising=False)
    if accounting._libc_function("mallopt", ("c_int", "c_int")) is None:
        pytest.skip("glibc's mallopt")
    accounting.fix_mmap_threshold()  # as a run does (process-wide; the run's 4 MB)
    seen = []
    inner = gen_mod._generate
    monkeypatch.setattr(gen_mod, "_generate", lambda *a, **k: (
        seen.append(accounting.decoding_heap_active()), inner(*a, **k))[1])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    gens, _ = generate(model, tok, [[1, 5, 6]], GenerationConfig(max_new_tokens=3), stop_ids=[2])
    assert seen == [True] and len(gens) == 1
    assert not accounting.decoding_heap_active()


@pytest.mark.parametrize("decode", ["continuous", "drop"])
def test_decoding_prefills_a_repeated_prompt_once(tiny_model_dir, decode):
    """RL's groups and the opponent's samples repeat each prompt k times: both decoding loops
    prefill each distinct prompt of an admission (a batch) once and give its rows its cache. Greedy,
    every copy is HF generate's answer to that prompt (with a shared prefix too); sampled, the
    copies draw their own answers, the same again for the same seed."""
    import dataclasses

    model, tok, prompts, hf, stops, ref, _ = _hf_reference(tiny_model_dir)
    distinct = prompts[:5]
    repeated = [p for p in distinct for _ in range(4)]  # 20 rows, 5 prompts
    rows = []  # the rows of every prefill pass (more than one token a row)
    hook = model.model.embed_tokens.register_forward_hook(
        lambda m, a, o: rows.append(a[0].shape[0]) if a[0].shape[1] > 1 else None)
    cont = GenerationConfig(max_new_tokens=40, batch_size=8, decode=decode)
    ours, _ = generate(model, tok, repeated, cont, stop_ids=stops)
    hook.remove()
    assert [g.ids for g in ours] == [g.ids for g in ref[:5] for _ in range(4)]
    assert rows[0] == 2  # the first admission (batch): 8 rows, two distinct prompts
    assert sum(rows) < len(repeated)
    pre = [list(range(10, 50)) + p for p in repeated]
    a, _ = generate(model, tok, pre[::4], hf, stop_ids=stops, min_shared=32)
    b, _ = generate(model, tok, pre, cont, stop_ids=stops, min_shared=32)
    assert [g.ids for g in b] == [g.ids for g in a for _ in range(4)]
    sampled = dataclasses.replace(cont, do_sample=True, temperature=1.0, seed=3)
    x, _ = generate(model, tok, repeated, sampled, stop_ids=[2])
    y, _ = generate(model, tok, repeated, sampled, stop_ids=[2])
    assert [g.ids for g in x] == [g.ids for g in y]
    assert all(len({tuple(g.ids) for g in x[i:i + 4]}) > 1 for i in range(0, 20, 4))
