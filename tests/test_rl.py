"""RL on the adapter: group-relative advantages, the clipped sequence-ratio surrogate, the KL to
the starting adapter through a swap of its tensors (one model copy)."""
import json

import pytest
import torch
from safetensors.torch import load_file


def test_advantages():
    from spinlora.stages.rl import advantages

    grpo = advantages([1.0, 0.0, 0.0, 1.0], "grpo")
    assert sum(grpo) == pytest.approx(0) and grpo[0] == pytest.approx(0.5 / (1 / 3) ** 0.5, rel=1e-3)
    assert advantages([1.0, 0.0, 0.0], "rloo") == pytest.approx([1.0, -0.5, -0.5])


def test_adapter_state_swaps_and_restores(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from spinlora.stages.rl import adapter_state

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    ids = torch.tensor([[3, 4, 5, 6]])
    now = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    zero = {n: torch.zeros_like(p) for n, p in now.items()}
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with adapter_state(model, zero):  # B = A = 0: the base model
            with model.disable_adapter():
                base = model(input_ids=ids).logits
            torch.testing.assert_close(model(input_ids=ids).logits, base)
        torch.testing.assert_close(model(input_ids=ids).logits, adapted)
    assert not torch.allclose(adapted, base)


def test_rl_stage_end_to_end(tiny_cfg, monkeypatch):
    import spinlora.stages.rl as rl
    from spinlora.pipeline import run

    # the tiny model never gets a sum right: a stand-in reward that differs inside each group
    monkeypatch.setattr(rl, "is_correct", lambda text, gold: len(text) % 2 == 0)
    tiny_cfg.stages = ["sft", "rl", "eval"]
    tiny_cfg.rl.rounds, tiny_cfg.rl.prompts, tiny_cfg.rl.samples = 2, 4, 4
    tiny_cfg.rl.lr, tiny_cfg.rl.heldout = 1e-2, 3
    assert run(tiny_cfg)["status"] == "ok"
    out = tiny_cfg.output_dir
    res = json.loads(open(f"{out}/rl/result.json").read())
    assert res["step0_ratio_ok"] and res["first_round_kl0_ok"]
    assert all(r["trained_samples"] > 0 for r in res["rounds"])
    assert len(open(f"{out}/rl/rounds.jsonl").read().splitlines()) == 2
    sft = load_file(f"{out}/sft/adapter/adapter_model.safetensors")
    rl_w = load_file(f"{out}/rl/adapter/adapter_model.safetensors")
    assert any(not torch.allclose(sft[k], rl_w[k]) for k in sft)  # the policy moved
    rows = json.loads(open(f"{out}/eval/result.json").read())["rows"]
    assert [r["label"] for r in rows] == ["base", "lora_sft", "lora_rl"]
