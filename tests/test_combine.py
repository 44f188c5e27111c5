"""``spinlora combine``: one plain LoRA adapter whose ΔW is Σ wᵢ·ΔWᵢ of others (different ranks,
scalings and target modules), loaded by peft and by spinlora; refusals that say why."""
import json
from pathlib import Path

import pytest
import torch

from spinlora import cli

IDS = torch.tensor([[5, 9, 14, 30, 41, 7, 22, 60, 3, 18]])


def _random_lora(base_dir: Path, out: Path, seed: int, **kw) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    peft_model.save_pretrained(out)
    return out


def _deltas(base_dir: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """ΔW of every weight the adapter changes (merged minus base)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir).state_dict()
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir),
                                       adapter).merge_and_unload().state_dict()
    return {k: merged[k] - base[k] for k in base if not torch.equal(merged[k], base[k])}


def _logits(model):
    with torch.inference_mode():
        return model(input_ids=IDS).logits


@pytest.fixture
def two_loras(tiny_model_dir, tmp_path):
    a = _random_lora(tiny_model_dir, tmp_path / "a", 1, r=4, lora_alpha=8,
                     target_modules=["q_proj", "v_proj"])
    b = _random_lora(tiny_model_dir, tmp_path / "b", 2, r=8, lora_alpha=4,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    return a, b


def test_combined_delta_is_the_weighted_sum(two_loras, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from spinlora import adapters

    a, b = two_loras
    out = tmp_path / "ab"
    assert cli.main(["combine", f"{a}=2", f"{b}=-0.5", "--out", str(out)]) == 0
    info = json.loads((out / "combine.json").read_text())
    assert info["r"] == 12 and info["layers"] == 8 and info["max_rel_delta_error"] < 1e-5
    assert [t["weight"] for t in info["terms"]] == [2.0, -0.5]
    # a term after --out is a term too, not a config override that would be dropped
    assert cli.parse(["combine", f"{a}=2", "--out", "o", f"{b}=-0.5"]).terms == \
        [f"{a}=2", f"{b}=-0.5"]
    assert (out / "tokenizer_config.json").is_file()

    da, db = _deltas(tiny_model_dir, a), _deltas(tiny_model_dir, b)
    assert set(da) < set(db)  # k_proj / o_proj only in b: the union is adapted
    want = {k: 2 * da.get(k, 0) - 0.5 * db[k] for k in db}
    got = _deltas(tiny_model_dir, out)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5)

    # the folder loads as a plain peft adapter, and through spinlora (fused forward) alike
    sd = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    target = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    target.load_state_dict({k: v + want[k] if k in want else v for k, v in sd.items()})
    expect = _logits(target)
    assert (expect - _logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir))).abs().max() > 1e-2
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    torch.testing.assert_close(_logits(plain.eval()), expect, rtol=1e-4, atol=1e-4)
    ours = adapters.load(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out,
                         trainable=False)
    torch.testing.assert_close(_logits(ours.eval()), expect, rtol=1e-4, atol=1e-4)


def test_an_adapter_minus_itself_is_the_base(two_loras, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    a, _ = two_loras
    out = tmp_path / "zero"
    assert cli.main(["combine", f"{a}=1", f"{a}=-1", "--out", str(out)]) == 0
    base = _logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval())
    zero = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    torch.testing.assert_close(_logits(zero.eval()), base, rtol=1e-5, atol=1e-5)


def test_refusals_say_why(two_loras, tiny_model_dir, tmp_path, capsys):
    a, b = two_loras
    assert cli.main(["combine", str(a), "--out", str(tmp_path / "x")]) == 2
    assert "PATH=WEIGHT" in capsys.readouterr().err
    for bad in ("two", "nan", "inf"):
        assert cli.main(["combine", f"{a}={bad}", "--out", str(tmp_path / "x")]) == 2
        assert "PATH=WEIGHT" in capsys.readouterr().err
    assert cli.main(["combine", f"{tmp_path / 'nope'}=1", "--out", str(tmp_path / "x")]) == 2
    assert "no such adapter folder" in capsys.readouterr().err
    dora = _random_lora(tiny_model_dir, tmp_path / "dora", 3, r=4, target_modules=["q_proj"],
                        use_dora=True)
    assert cli.main(["combine", f"{a}=1", f"{dora}=1", "--out", str(tmp_path / "x")]) == 2
    assert "only plain LoRA" in capsys.readouterr().err
    other = json.loads((b / "adapter_config.json").read_text())
    other["base_model_name_or_path"] = "someone/else"
    (b / "adapter_config.json").write_text(json.dumps(other))
    assert cli.main(["combine", f"{a}=1", f"{b}=1", "--out", str(tmp_path / "x")]) == 2
    assert "different base models" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
    done = tmp_path / "done"
    assert cli.main(["combine", f"{a}=1", "--out", str(done)]) == 0
    assert cli.main(["combine", f"{a}=2", "--out", str(done)]) == 2
    assert "not empty" in capsys.readouterr().err
