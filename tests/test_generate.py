"""Batched generation: the in-place KV cache gives exactly transformers' default result."""
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
    assert calls == ["StaticCache", "Cache", "Cache"]  # one failure, then dynamic for good
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
            max_new_tokens=30, batch_size=3, cache=cache), stop_ids=[2], stop_strings=["AA", "cc"],
            min_shared=32)
    assert [x.ids for x in got["static"]] == [x.ids for x in got["dynamic"]]
    assert [x.finished for x in got["static"]] == [x.finished for x in got["dynamic"]]
    assert any(x.finished for x in got["static"])  # some answers did stop at a stop string
