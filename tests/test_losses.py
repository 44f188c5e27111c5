"""Losses against hand computations, and the answer-only log-prob pass against full logits."""
import math

import pytest
import torch
import torch.nn.functional as F

from spinlora.data import collate
from spinlora.losses import LN2, spin_loss
from spinlora.scoring import answer_logps


def test_spin_loss_matches_hand_computation():
    # margin = λ·[(−10 − (−11)) − (−12 − (−11.5))] = 0.1 · (1 + 0.5) = 0.15
    loss, margin, _ = spin_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]),
                             torch.tensor([-11.5]), beta=0.1)
    assert margin.item() == pytest.approx(0.15, abs=1e-6)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.15)), abs=1e-6)


def test_spin_loss_equals_dpo_sigmoid_loss_chosen_gold_rejected_generated():
    g = torch.Generator().manual_seed(0)
    pr, pg, rr, rg = (torch.randn(32, generator=g) * 20 - 50 for _ in range(4))
    for beta in (0.1, 1.0, 5.0):
        ours, _, _ = spin_loss(pr, pg, rr, rg, beta)
        # DPO (Rafailov et al. 2023): -log σ(β[(log πc − log πref_c) − (log πr − log πref_r)])
        dpo = -F.logsigmoid(beta * ((pr - rr) - (pg - rg)))
        torch.testing.assert_close(ours, dpo, rtol=1e-5, atol=1e-5)


def test_spin_loss_is_ln2_when_player_equals_reference():
    x, y = torch.tensor([-30.0, -7.0]), torch.tensor([-25.0, -9.0])
    loss, margin, _ = spin_loss(x, y, x.clone(), y.clone(), beta=0.1)
    assert torch.allclose(loss, torch.full_like(loss, LN2))
    assert torch.all(margin == 0)


def test_answer_logps_equals_full_logits_and_ignores_padding(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    pairs = [([1, 5, 6, 7], [8, 9, 2]), ([1, 5], [10, 11, 12, 13, 2])]
    with torch.no_grad():
        lp, counts = answer_logps(model, collate(pairs, pad_id=2))
        for i, (p, a) in enumerate(pairs):
            ids = torch.tensor([p + a])
            logits = model(ids).logits[0, :-1].log_softmax(-1)
            want = logits[torch.arange(len(p) - 1, len(p) + len(a) - 1), torch.tensor(a)].sum()
            assert lp[i].item() == pytest.approx(want.item(), abs=1e-4)
            assert counts[i].item() == len(a)


def test_right_padded_pass_runs_without_a_padding_mask(tiny_model_dir):
    """SFT's full pass gives the decoder no padding mask for a right-padded batch (so SDPA runs
    causal, without the masked kernel), with the same log-probs and gradients as with the mask;
    a batch that is not right-padded keeps its mask."""
    from transformers import AutoModelForCausalLM

    from spinlora.data import Batch
    from spinlora.scoring import _causal_mask_only, _lm

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = collate([([1, 5, 6, 7], [8, 9, 2]), ([1, 5], [10, 11, 12, 13, 2]), ([1], [4, 2])], 2)
    seen = []
    hook = _lm(model).get_decoder().register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs.get("attention_mask")), with_kwargs=True)
    lp, _ = answer_logps(model, batch)
    hook.remove()
    assert seen == [None]
    lp.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    decoder = _lm(model).get_decoder()
    hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    target = batch.answer_mask[:, 1:]
    logits = model.lm_head(hidden[:, :-1]).log_softmax(-1)
    picked = logits.gather(-1, batch.input_ids[:, 1:, None])[..., 0] * target
    masked = picked.sum(1)
    assert torch.allclose(lp, masked, atol=1e-5)
    masked.sum().backward()
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)
    left = Batch(batch.input_ids.flip(1), batch.attention_mask.flip(1), batch.answer_mask.flip(1))
    assert _causal_mask_only(left) is left.attention_mask
    full = collate([([1, 5], [6, 2]), ([1, 7], [8, 2])], 2)
    assert _causal_mask_only(full) is None


def test_shared_prompt_logps_equal_separate_passes(tiny_model_dir):
    """One prompt pass for several answers gives the same log-probs and gradients as
    separate full passes."""
    from transformers import AutoModelForCausalLM

    from spinlora.scoring import score_answers, shared_prompt_pass

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompts = [[1, 5, 6, 7, 8], [1, 9], [1, 10, 11]]
    answers = [[[20, 21, 2], [22, 23, 24, 25]], [[30, 2], [31, 32, 33, 34, 35, 2]], [[40], [41, 42]]]
    shared = score_answers(model, prompts, answers, pad_id=2)[0].view(3, 2)
    shared.sum().backward()
    g_shared = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    model.zero_grad()
    total = 0
    for i, p in enumerate(prompts):
        for j, a in enumerate(answers[i]):
            sep, _ = answer_logps(model, collate([(p, a)], pad_id=2))
            assert shared[i, j].item() == pytest.approx(sep.item(), abs=1e-4)
            total = total + sep.sum()
    total.backward()
    torch.testing.assert_close(g_shared, model.model.layers[0].self_attn.q_proj.weight.grad,
                               rtol=1e-4, atol=1e-6)
    model.gradient_checkpointing_enable()
    assert shared_prompt_pass(model, prompts, answers, pad_id=2) is None
    model.zero_grad()
    full = score_answers(model, prompts, answers, pad_id=2)[0].view(3, 2)  # full sequences
    torch.testing.assert_close(full, shared, rtol=1e-5, atol=1e-4)
    full.sum().backward()
    torch.testing.assert_close(g_shared, model.model.layers[0].self_attn.q_proj.weight.grad,
                               rtol=1e-4, atol=1e-6)


def _lora_tiny(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                             init_lora_weights=False))
    return model


def test_chunked_logps_equal_one_pass_in_value_and_gradient(tiny_model_dir, monkeypatch):
    """LM head in chunks of 5 tokens, recomputed in backward: same log-probs and gradients as one
    pass over all tokens (also through the shared-prompt path)."""
    import spinlora.scoring as L

    model = _lora_tiny(tiny_model_dir)
    pairs = [([1, 5, 6, 7], [8, 9, 2, 11, 12, 13]), ([1, 5], [10, 11, 12, 13, 2, 14, 15])]
    grads, values = [], []
    for chunk in (None, 5):
        monkeypatch.setattr(L, "LOGIT_CHUNK_TOKENS", chunk)
        model.zero_grad()
        lp, _ = answer_logps(model, collate(pairs, pad_id=2))
        shared = L.score_answers(model, [p for p, _ in pairs], [[a] for _, a in pairs], 2)[0]
        (lp.sum() + shared.sum()).backward()
        values.append(torch.cat([lp, shared]).detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(values[0], values[1], rtol=1e-5, atol=1e-5)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6)


def test_final_logit_softcapping_is_applied(tiny_model_dir):
    """Calling the LM head alone skips Gemma-style soft-capping; token_logps applies it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    model.config.final_logit_softcapping = 0.5  # strong, so a missing cap would show
    p, a = [1, 5, 6, 7], [8, 9, 2]
    with torch.no_grad():
        lp, _ = answer_logps(model, collate([(p, a)], pad_id=2))
        raw = model(torch.tensor([p + a])).logits[0, :-1]
        capped = (torch.tanh(raw / 0.5) * 0.5).log_softmax(-1)
        uncapped = raw.log_softmax(-1)
    pos, tgt = torch.arange(len(p) - 1, len(p) + len(a) - 1), torch.tensor(a)
    assert lp.item() == pytest.approx(capped[pos, tgt].sum().item(), abs=1e-4)
    assert abs(lp.item() - uncapped[pos, tgt].sum().item()) > 1e-2


def test_hessian_vector_product_through_chunked_head(tiny_model_dir, monkeypatch):
    """Double backward (the Hessian tool) works through the checkpointed chunks."""
    import spinlora.scoring as L

    model = _lora_tiny(tiny_model_dir)
    model.set_attn_implementation("eager")  # as spinlora hessian does: no double backward in SDPA
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]
    batch = collate([([1, 5, 6, 7], [8, 9, 2, 11, 12, 13, 14, 15])], pad_id=2)
    out = []
    for chunk in (None, 3):
        monkeypatch.setattr(L, "LOGIT_CHUNK_TOKENS", chunk)
        lp, _ = answer_logps(model, batch)
        g = torch.autograd.grad(-lp.sum(), params, create_graph=True)
        hv = torch.autograd.grad(g, params, grad_outputs=v)
        out.append(torch.cat([h.flatten() for h in hv]))
    torch.testing.assert_close(out[0], out[1], rtol=1e-4, atol=1e-5)


def test_sft_shared_prefix_gives_the_full_pass_loss_and_gradients(tiny_model_dir):
    """SFT rows whose prompts share a prefix (a system prompt) run it once, at batch 1, and the
    rows on its KV cache: the loss and every adapter gradient equal the whole-row pass's, and the
    prefix really ran once (the first decoder call is one row of the shared tokens). Below
    SHARED_ROWS rows, where it does not pay, the rows run whole."""
    from transformers import AutoModelForCausalLM

    from spinlora import adapters
    from spinlora.config import AdapterConfig
    from spinlora.data import Example
    from spinlora.stages.sft import SHARED_MIN, SHARED_ROWS, sft_objective

    torch.manual_seed(0)
    model = adapters.attach(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                            AdapterConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)  # a trained-looking adapter: gradients reach A too
    system = list(range(3, 3 + SHARED_MIN + 4))
    items = [Example("", "", system + [40, 41, 42], [50, 51, 2]),
             Example("", "", system + [43], [52, 53, 54, 55, 2]),
             Example("", "", system + [44, 45], [56, 2]),
             Example("", "", system + [46, 47, 48, 49], [57, 58, 2])]
    assert len(items) >= SHARED_ROWS

    def run(rows, share):  # the loss, and the (rows, tokens) of every embedding lookup
        calls = []
        hook = model.get_base_model().get_input_embeddings().register_forward_hook(
            lambda m, args, out: calls.append(tuple(args[0].shape)))
        loss, _ = sft_objective(pad_id=2, share_prefix=share).loss(model, rows)
        hook.remove()
        return loss, calls

    results = {}
    for share in (False, True):
        model.zero_grad()
        loss, calls = run(items, share)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results[share] = (loss.detach(), grads, calls)
    (l0, g0, c0), (l1, g1, c1) = results[False], results[True]
    assert c0 == [(4, max(len(e.prompt_ids) + len(e.answer_ids) for e in items))]  # whole rows
    assert c1[0] == (1, len(system)) and c1[1][0] == 4  # the prefix once, then the four rests
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    assert g0 and all(g.abs().sum() > 0 for g in g0.values())
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-4, atol=1e-6)
    few = items[:SHARED_ROWS - 1]
    _, calls = run(few, True)
    assert calls == [(len(few), max(len(e.prompt_ids) + len(e.answer_ids) for e in few))]


def test_neftune_noises_training_embeddings_only_and_is_removed(tiny_cfg, monkeypatch):
    """train.neftune_alpha: while SFT trains, every embedding lookup is the clean one plus
    uniform noise within alpha / sqrt(L * d) (L the batch's padded length), every row runs whole
    (no shared-prefix pass, whose length would scale the noise otherwise), and after SFT the
    hook is gone: a later lookup in training mode is the clean one."""
    import json

    import spinlora.stages.sft as sft
    from spinlora.pipeline import run

    seen = []  # (rows, largest |noise|, bound) of every lookup in training

    def watch(module, args, out):
        if module.training:
            clean = module.weight[args[0]]
            bound = module.neftune_noise_alpha / math.sqrt(out.size(1) * out.size(2))
            seen.append((out.size(0), float((out - clean).abs().max()), bound))

    real = sft.activate_neftune
    handles = {}

    def activate(model, alpha):
        h = real(model, alpha)
        emb = model.get_base_model().get_input_embeddings()
        handles["emb"], handles["watch"] = emb, emb.register_forward_hook(watch)
        return h

    monkeypatch.setattr(sft, "activate_neftune", activate)
    tiny_cfg.stages = ["sft"]
    tiny_cfg.train.neftune_alpha = 5.0
    assert run(tiny_cfg)["status"] == "ok"
    handles["watch"].remove()
    res = json.loads(open(f"{tiny_cfg.output_dir}/sft/result.json").read())
    assert res["neftune_alpha"] == 5.0 and res["steps"] == len(seen) == 3
    for rows, noise, bound in seen:
        assert rows == tiny_cfg.train.micro_batch_size  # whole rows, never the 1-row prefix
        assert 0.5 * bound < noise <= bound * (1 + 1e-6)
    emb = handles["emb"]
    assert not hasattr(emb, "neftune_noise_alpha")
    emb.train()
    ids = torch.tensor([[3, 4, 5]])
    assert torch.equal(emb(ids), emb.weight[ids])


def test_neftune_alpha_below_zero_is_refused():
    from spinlora.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="train.neftune_alpha"):
        load_config(None, ["train.neftune_alpha=-1"])
