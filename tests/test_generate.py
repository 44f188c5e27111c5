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
