"""QLoRA / 8-bit on CPU through bitsandbytes: the base loads quantised (and counted right: 4-bit
packs two values a byte), LoRA trains on it through the pipeline, methods that need the
full-precision weights say so."""
import json
from pathlib import Path

import pytest

from spinlora import adapters
from spinlora.accounting import count_parameters
from spinlora.config import AdapterConfig, ModelConfig
from spinlora.models import load_model

pytest.importorskip("bitsandbytes")


@pytest.mark.parametrize("kind,cls", [("nf4", "Linear4bit"), ("int8", "Linear8bitLt")])
def test_quantised_base_loads_counts_and_trains(kind, cls, tiny_model_dir, tiny_cfg):
    full, _ = load_model(ModelConfig(name=str(tiny_model_dir), dtype="float32"))
    q, _ = load_model(ModelConfig(name=str(tiny_model_dir), dtype="float32", quantization=kind))
    assert type(q.model.layers[0].self_attn.q_proj).__name__ == cls
    cf, cq = count_parameters(full), count_parameters(q)
    assert cq["total"] == cf["total"]  # the same parameters, whatever their storage
    linear = sum(m.weight.numel() for n, m in full.named_modules() if n.endswith("_proj"))
    saved = cf["weight_bytes"] - cq["weight_bytes"]
    assert saved >= linear * (4 - (0.5 if kind == "nf4" else 1)) * 0.99

    tiny_cfg.model.quantization = kind
    tiny_cfg.stages, tiny_cfg.eval.models = ["sft", "eval"], ["base", "sft"]
    from spinlora.pipeline import run

    assert run(tiny_cfg)["status"] == "ok"
    res = json.loads((Path(tiny_cfg.output_dir) / "sft" / "result.json").read_text())
    assert res["loss_last"] < res["loss_first"]


def test_methods_that_need_full_precision_say_so(tiny_model_dir):
    q, _ = load_model(ModelConfig(name=str(tiny_model_dir), dtype="float32", quantization="nf4"))
    with pytest.raises(adapters.AdapterError, match="cannot run on a quantised base"):
        adapters.attach(q, AdapterConfig(method="full"))
