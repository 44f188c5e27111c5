"""The adapter contract, one table, every method of the registry (tiny random Llama):
trainable-parameter count equals the method's formula; output unchanged at init where promised;
one optimizer step changes only the method's parameters; save -> load into a fresh base gives the
same output; merged equals unmerged where merging exists; the base view equals the base model."""
import copy
import json
from pathlib import Path

import pytest
import torch

from spinlora import adapters
from spinlora.config import AdapterConfig
from spinlora.pipeline import run

IDS = torch.tensor([[5, 9, 14, 22, 31, 40, 41, 50, 7, 8, 60, 61], [6, 9, 15, 23, 30, 44, 45, 51, 7, 9, 62, 63]])


def _fresh(path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits[:, -IDS.shape[1]:].float()


def _cfg(name):
    return AdapterConfig(method=name, r=4, alpha=8, init_r=6, num_virtual_tokens=4,
                         encoder_hidden_size=16, bottleneck_size=8, add_biases=True, keep_top_k=3)


@pytest.mark.parametrize("name", list(adapters.REGISTRY))
def test_adapter_contract(name, tiny_model_dir, tmp_path):
    method, cfg = adapters.get(name), _cfg(name)
    base = _fresh(tiny_model_dir)
    want_base = _logits(base)
    expected = method.count(base, cfg, adapters.targets(base, method, cfg))
    model = adapters.attach(base, cfg)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == expected > 0

    if method.identity_at_init:
        assert torch.allclose(_logits(model), want_base, atol=1e-4)
    adapters.save(model, cfg, tmp_path / "init")

    # one step changes the method's parameters and nothing else
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):  # two steps: B = 0 at init makes A's first gradient zero
        logits = model(input_ids=IDS).logits[:, -IDS.shape[1]:]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 IDS[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
    assert any(not torch.equal(after[n], v) for n, v in trainable.items())
    if method.finish:
        method.finish(model, cfg)
    trained = _logits(model)
    assert not torch.allclose(trained, want_base, atol=1e-4)

    # save -> load into a fresh base model (plain peft where the method is peft's)
    adapters.save(model, cfg, tmp_path / "trained", init_path=tmp_path / "init")
    if method.kind == "full":
        reloaded = _fresh(tmp_path / "trained")
    else:
        reloaded = adapters.load(_fresh(tiny_model_dir), tmp_path / "trained", trainable=False)
    assert torch.allclose(_logits(reloaded), trained, atol=1e-4)

    if method.mergeable and method.kind == "peft":
        model.merge_adapter()
        merged = _logits(model)
        model.unmerge_adapter()
        assert torch.allclose(merged, trained, atol=1e-4)

    with adapters.load_base_view(model, cfg, tmp_path / "init"):
        assert torch.allclose(_logits(model), want_base, atol=1e-4)


def test_bitfit_on_a_model_without_biases_says_why(tiny_model_dir):
    cfg = AdapterConfig(method="bitfit")
    with pytest.raises(adapters.AdapterError, match="no bias parameters.*add_biases=true"):
        adapters.attach(_fresh(tiny_model_dir), cfg)


def test_missing_target_modules_name_the_layers_there(tiny_model_dir):
    with pytest.raises(adapters.AdapterError, match=r"\['c_attn'\] not found.*q_proj"):
        adapters.attach(_fresh(tiny_model_dir), AdapterConfig(method="dora", target_modules=["c_attn"]))


def test_a_full_checkpoint_given_as_adapter_says_use_it_as_the_model(tiny_cfg, tiny_model_dir):
    tiny_cfg.sft_adapter = str(tiny_model_dir)
    with pytest.raises(adapters.AdapterError, match="full model checkpoint.*--model"):
        run(tiny_cfg)


def test_unknown_method_and_quantised_base_errors(tiny_model_dir):
    with pytest.raises(adapters.AdapterError, match="unknown adapter.method 'loraa'"):
        adapters.attach(_fresh(tiny_model_dir), AdapterConfig(method="loraa"))
    model = _fresh(tiny_model_dir)
    model.is_loaded_in_4bit = True
    with pytest.raises(adapters.AdapterError, match="cannot run on a quantised base"):
        adapters.attach(model, AdapterConfig(method="pissa"))


def test_weightlora_keeps_top_k_and_saves_plain_lora(tiny_model_dir, tmp_path):
    cfg = _cfg("weightlora")
    model = adapters.attach(_fresh(tiny_model_dir), cfg)
    layers = adapters.weightlora._layers(model)
    with torch.no_grad():
        for i, (_, m) in enumerate(layers):
            m.lora_B["default"].weight.fill_(0.1)
            m.weightlora_omega.fill_(float(i + 1))  # the last layers score highest
    before = _logits(model)
    sel = adapters.weightlora.finish(model, cfg)
    assert sel["kept"] == sorted(n for n, _ in layers[-3:]) and sel["of"] == len(layers)
    for n, m in layers:
        off = n not in sel["kept"]
        assert (m.lora_B["default"].weight.abs().sum() == 0) == off
        assert m.lora_B["default"].weight.requires_grad == (not off)
    assert not torch.allclose(_logits(model), before)  # the switched-off adapters are gone


@pytest.fixture(scope="module")
def base_gold_logp():
    """Gold log-prob per token of the plain base model on the eval subset, once per module."""
    memo = {}

    def get(cfg):
        if "v" not in memo:
            c = copy.deepcopy(cfg)
            c.stages, c.eval.models = ["eval"], ["base"]
            c.output_dir = str(Path(cfg.output_dir).parent / "base_only")
            run(c)
            memo["v"] = _rows(c)[0]["gold_logp_per_token"]
        return memo["v"]

    return get


def _rows(cfg):
    return json.loads((Path(cfg.output_dir) / "eval" / "result.json").read_text())["rows"]


@pytest.mark.parametrize("name", list(adapters.REGISTRY))
def test_every_method_runs_sft_spin_and_eval(name, tiny_cfg, base_gold_logp):
    """Each method through the whole pipeline: SFT, one SPIN iteration (step-0 loss ln 2: the
    reference is the opponent), evaluation of base / SFT / SPIN, where the base row is the base
    model's output for every method (peft's disable_adapter, or the method's initial state)."""
    cfg = tiny_cfg
    cfg.adapter = _cfg(name)
    cfg.spin.iterations, cfg.spin.prompts, cfg.data.sft_examples = 1, 4, 8
    assert run(cfg)["status"] == "ok"
    it = json.loads((Path(cfg.output_dir) / "spin" / "iter_1" / "result.json").read_text())
    assert it["method"] == name and it["step0_ok"]
    rows = _rows(cfg)
    assert [r["label"] for r in rows] == ["base", f"{name}_sft", f"{name}_spin_iter_1"]
    assert rows[0]["gold_logp_per_token"] == pytest.approx(base_gold_logp(cfg), abs=1e-4)


@pytest.mark.parametrize("name", list(adapters.REGISTRY))
def test_gradient_checkpointing_gives_the_same_gradients(name, tiny_model_dir):
    """Checkpointing recomputes activations: the gradients must not change. Methods that cannot
    use it are refused by the training loop with the reason."""
    from spinlora.config import TrainConfig
    from spinlora.train import Objective, train_loop

    method, cfg = adapters.get(name), _cfg(name)
    if not method.gradient_checkpointing:
        model = adapters.attach(_fresh(tiny_model_dir), cfg)
        obj = Objective(loss=lambda m, b: (m(input_ids=IDS).logits.sum(), {}),
                        weight=lambda b: 1.0, tokens=lambda b: 1)
        with pytest.raises(ValueError, match="gradient_checkpointing is not possible"):
            train_loop(model, [0], obj, TrainConfig(gradient_checkpointing=True, batch_size=1,
                                                    micro_batch_size=1), 1e-3, 1, None, None, 0,
                       "t", method=name)
        return
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = adapters.attach(_fresh(tiny_model_dir), cfg)
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        logits = model(input_ids=IDS).logits[:, -IDS.shape[1]:]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 IDS[:, 1:].reshape(-1))
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-5), n


def _lora_step(model):
    """Logits and the LoRA gradients of one loss (B made non-zero first, so A gets one too)."""
    g = torch.Generator().manual_seed(3)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data = torch.randn(p.shape, generator=g) * 0.1
    logits = model(input_ids=IDS).logits
    logits.float().log_softmax(-1)[:, :-1].gather(-1, IDS[:, 1:, None]).sum().backward()
    return logits.detach().float(), {n: p.grad.float() for n, p in model.named_parameters()
                                     if p.requires_grad}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_lora_forward_matches_peft(dtype, tiny_model_dir, tmp_path):
    """adapter.fused (the default) routes LoRA through one addmm: fp32 gives peft's logits and
    gradients; over a bf16 base it stays within bf16 rounding of peft's fp32-product forward."""
    from spinlora.adapters.lora import fused_forward

    runs = {}
    for fused in (False, True):
        torch.manual_seed(0)  # the same A at init
        model = adapters.attach(_fresh(tiny_model_dir).to(dtype),
                                AdapterConfig(r=4, alpha=8, fused=fused,
                                              target_modules=["q_proj", "v_proj", "up_proj"]))
        patched = [m for m in model.modules()
                   if getattr(vars(m).get("forward"), "func", None) is fused_forward]
        assert len(patched) == (6 if fused else 0)  # 2 layers x 3 projections
        runs[fused] = _lora_step(model)
    (lp, gp), (lf, gf) = runs[False], runs[True]
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.1, rtol=0.05)
    assert torch.allclose(lf, lp, **tol)
    for n in gp:
        assert torch.allclose(gf[n], gp[n], atol=tol["atol"] * gp[n].abs().max().item() + 1e-8,
                              rtol=tol["rtol"]), n
    # the adapter itself stays fp32 (its weights, gradients, optimizer state)
    assert all(g.dtype == torch.float32 for g in gf.values())


def test_fused_lora_steps_aside_where_peft_must_run(tiny_model_dir, tmp_path):
    """Adapters disabled (the base view), merged, or a variant (DoRA) take peft's own forward;
    a saved adapter loaded back is fused again and gives the same logits."""
    model = adapters.attach(_fresh(tiny_model_dir), AdapterConfig(r=4, alpha=8))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    base = _logits(_fresh(tiny_model_dir))
    on = _logits(model)
    assert not torch.allclose(on, base, atol=1e-3)
    with model.disable_adapter():
        assert torch.allclose(_logits(model), base, atol=1e-5)
    adapters.save(model, AdapterConfig(r=4, alpha=8), tmp_path / "a")
    loaded = adapters.load(_fresh(tiny_model_dir), tmp_path / "a", trainable=False)
    assert torch.allclose(_logits(loaded), on, atol=1e-5)
    loaded.merge_adapter()
    assert torch.allclose(_logits(loaded), on, atol=1e-4)
    dora = adapters.attach(_fresh(tiny_model_dir), AdapterConfig(method="dora", r=4, alpha=8))
    assert torch.allclose(_logits(dora), base, atol=1e-5)  # identity at init through peft's path
    # WeightLoRA's ω is a forward hook on B, which the fused product would bypass
    wl = adapters.attach(_fresh(tiny_model_dir), AdapterConfig(method="weightlora", r=4, alpha=8))
    _, grads = _lora_step(wl)
    omegas = [g for n, g in grads.items() if n.endswith("weightlora_omega")]
    assert omegas and all(g.abs() > 0 for g in omegas)
