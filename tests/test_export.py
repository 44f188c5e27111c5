"""``spinlora export``: a run's adapter merged into a transformers checkpoint that loads without
peft and gives base + adapter's logits; the plain peft copy; refusals that say why."""
import json
from pathlib import Path

import yaml

import pytest
import torch

from spinlora import cli


@pytest.fixture
def sft_run(tiny_cfg):
    from spinlora.pipeline import run

    tiny_cfg.stages = ["sft"]
    assert run(tiny_cfg)["status"] == "ok"
    return Path(tiny_cfg.output_dir)


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_merge_loads_without_peft_and_equals_base_plus_adapter(sft_run, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    assert cli.main(["export", str(sft_run), "--merge", "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    info = json.loads((out / "export.json").read_text())
    assert info["adapter"] == str(sft_run / "sft" / "adapter") and info["merged"]

    ids = torch.tensor([[5, 9, 14, 30, 41, 7, 22, 60, 3, 18]])
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    plain = _logits(base, ids)
    adapted = _logits(PeftModel.from_pretrained(base, sft_run / "sft" / "adapter").eval(), ids)
    assert (adapted - plain).abs().max() > 1e-3  # SFT moved the model: the check can fail
    torch.testing.assert_close(_logits(merged, ids), adapted, rtol=1e-4, atol=1e-4)


def test_plain_copy_and_refusals(sft_run, tmp_path, capsys):
    out = tmp_path / "lora"
    assert cli.main(["export", str(sft_run / "sft" / "adapter"), "--out", str(out)]) == 0
    assert (out / "adapter_config.json").is_file() and (out / "tokenizer_config.json").is_file()
    # a non-empty --out is refused; a run with nothing finished is refused
    assert cli.main(["export", str(sft_run), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    (empty_run / "run.json").write_text("{}")
    assert cli.main(["export", str(empty_run), "--out", str(tmp_path / "x")]) == 2
    assert "no finished adapter" in capsys.readouterr().err


def test_unmergeable_method_is_refused(tiny_cfg, tmp_path, capsys):
    from spinlora.pipeline import run

    tiny_cfg.stages = ["sft"]
    tiny_cfg.adapter.method = "prompt"
    tiny_cfg.adapter.num_virtual_tokens = 4
    assert run(tiny_cfg)["status"] == "ok"
    out = tmp_path / "merged"
    assert cli.main(["export", tiny_cfg.output_dir, "--merge", "--out", str(out)]) == 2
    assert "cannot be merged" in capsys.readouterr().err and not out.exists()


def test_base_model_of_an_adapter_copied_from_another_machine(tmp_path):
    """peft records the base model's directory; an absolute one that is absent here stands for
    the embedded default when it names it, and is refused with what to pass otherwise."""
    from spinlora.adapters import AdapterError
    from spinlora.config import DEFAULT_MODEL
    from spinlora.export import base_name

    def adapter(name):
        folder = tmp_path / f"a{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": name}))
        return folder

    elsewhere = adapter(f"/home/someone/.cache/spinlora/models/{DEFAULT_MODEL}")
    assert base_name(elsewhere, elsewhere) == DEFAULT_MODEL
    here = tmp_path / "model"
    here.mkdir()
    local = adapter(str(here))
    assert base_name(local, local) == str(here)
    hub = adapter("Qwen/Qwen2.5-0.5B-Instruct")
    assert base_name(hub, hub) == "Qwen/Qwen2.5-0.5B-Instruct"
    gone = adapter("/home/someone/models/my-llama")
    with pytest.raises(AdapterError, match="pass --model"):
        base_name(gone, gone)


def test_export_carries_the_trained_prompt_format(tiny_cfg, tmp_path):
    """An adapter trained with data.reread and a system prompt is exported with a chat template
    that builds those prompts: plain apply_chat_template equals spinlora's own prompt ids."""
    from transformers import AutoTokenizer

    from spinlora.data import ChatFormat
    from spinlora.pipeline import run

    tiny_cfg.stages = ["sft"]
    tiny_cfg.data.reread = True
    tiny_cfg.data.system_prompt = "Answer with an equation."
    tiny_cfg.data.max_length = 320
    assert run(tiny_cfg)["status"] == "ok"
    out = tmp_path / "lora"
    assert cli.main(["export", str(tiny_cfg.output_dir), "--out", str(out)]) == 0
    info = json.loads((out / "export.json").read_text())
    assert info["prompt_format"] == {"system_prompt": "Answer with an equation.", "reread": True,
                                     "question_first": False, "chat_template": "rewritten"}
    tok = AutoTokenizer.from_pretrained(out)
    prompt = "Ann has 5 pens and 2 cups. She buys 3 pens. How many pens?"
    plain = list(tok.apply_chat_template([{"role": "user", "content": prompt}],
                                         add_generation_prompt=True, tokenize=True,
                                         return_dict=False))
    trained = AutoTokenizer.from_pretrained(tiny_cfg.model.name)  # the template as it was
    assert plain == ChatFormat(trained, "Answer with an equation.", True).prompt_ids(prompt)
    text = tok.decode(plain)
    assert text.count(prompt) == 2 and "Answer with an equation." in text
    # a chat that brings its own system turn keeps it
    own = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": prompt}], tokenize=False)
    assert "Be brief." in own and "Answer with an equation." not in own


def test_export_without_a_prompt_setting_keeps_the_template(sft_run, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "lora"
    assert cli.main(["export", str(sft_run), "--out", str(out)]) == 0
    info = json.loads((out / "export.json").read_text())
    assert info["prompt_format"]["chat_template"] == "unchanged"
    name = yaml.safe_load((sft_run / "config.yaml").read_text())["model"]["name"]
    assert AutoTokenizer.from_pretrained(out).chat_template == \
        AutoTokenizer.from_pretrained(name).chat_template
