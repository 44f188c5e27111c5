"""generation.engine=llamacpp: the GGUF files it writes are the torch model's weights and peft's
LoRA, and on the embedded model it gives the torch engine's greedy tokens in fp32."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, SHARED


def _lora_model(model, targets=("q_proj", "k_proj", "v_proj"), seed=0, scale=0.05):
    """A LoRA whose B is random (a fresh LoRA has B = 0 and would change nothing)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets)))
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * scale
    return model.eval()


# The two engines' fp32 logits are the same sums in another order over 30 layers, and greedy
# picks on these prompts come close to ties: the smallest gap between the torch model's two best
# logits on the test's 10 answers is 2.4e-4 (session 52), where a rounding can flip the pick
TIE = 5e-3


def _splits(model, prompts, ours, ref):
    """For each answer that differs from the reference: the torch model's logit gap between the
    two tokens at the first position where they part (a near-tie, if the engines agree)."""
    gaps = []
    for p, a, b in zip(prompts, ours, ref):
        if a.ids == b.ids:
            continue
        k = next((i for i, (x, y) in enumerate(zip(a.ids, b.ids)) if x != y), None)
        if k is None:  # one stops where the other goes on: no tie between two tokens
            gaps.append(float("inf"))
            continue
        with torch.no_grad():
            logits = model(torch.tensor([p + b.ids[:k]])).logits[0, -1].float()
        gaps.append(float((logits[a.ids[k]] - logits[b.ids[k]]).abs()))
    return gaps


def test_lora_gguf_is_peft_delta_in_llamacpp_layout(tiny_model_dir, tmp_path):
    """Read back, every layer's B·A times llama.cpp's scale (alpha / rank) is peft's delta,
    with q and k rows in the GGUF layout (transformers' own loader undoes that permutation)."""
    import gguf
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from spinlora.llamacpp import lora_gguf

    model = _lora_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                        targets=("q_proj", "k_proj", "v_proj", "down_proj"))
    path = lora_gguf(model, tmp_path / "lora.gguf")
    reader = gguf.GGUFReader(path)
    alpha = float(reader.fields[gguf.Keys.Adapter.LORA_ALPHA].contents())
    got = {t.name: np.array(t.data) for t in reader.tensors}
    cfg = model.get_base_model().config
    unpermute = LlamaTensorProcessor(config={"num_attention_heads": cfg.num_attention_heads,
                                             "num_key_value_heads": cfg.num_key_value_heads})
    checked = 0
    for layer in range(cfg.num_hidden_layers):
        for hf, name in (("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
                         ("self_attn.v_proj", "attn_v"), ("mlp.down_proj", "ffn_down")):
            m = model.get_submodule(f"base_model.model.model.layers.{layer}.{hf}")
            want = (m.lora_B["default"].weight @ m.lora_A["default"].weight).detach().numpy()
            want = want * m.scaling["default"]
            a, b = got[f"blk.{layer}.{name}.weight.lora_a"], got[f"blk.{layer}.{name}.weight.lora_b"]
            delta = (b @ a) * alpha / a.shape[0]
            if name in ("attn_q", "attn_k"):
                delta = unpermute.process(delta, f"blk.{layer}.{name}.weight").weights
            np.testing.assert_allclose(delta, want, rtol=1e-5, atol=1e-7)
            checked += 1
    assert checked == 4 * cfg.num_hidden_layers and np.abs(want).max() > 0


def test_llamacpp_engine_refuses_what_it_cannot_run(tiny_model_dir, tiny_data, tmp_path):
    from spinlora.config import ConfigError, load_config
    from spinlora.pipeline import run

    with pytest.raises(ConfigError, match="generation.engine"):
        load_config(None, ["generation.engine=vllm"])
    cfg = load_config(None, [f"output_dir={tmp_path / 'run'}", f"model.name={tiny_model_dir}",
                             "model.dtype=float32", f"data.train={tiny_data / 'train.jsonl'}",
                             f"data.eval={tiny_data / 'test.jsonl'}", "stages=[eval]",
                             "eval.models=[base]", "eval.limit=2", "generation.engine=llamacpp"])
    with pytest.raises(ValueError, match="generation.engine=llamacpp cannot run this model: "
                                         "(the base model has no source GGUF|llama-cpp-python)"):
        run(cfg)


@pytest.mark.slow
def test_engine_gguf_holds_the_torch_models_weights(tmp_path):
    """The bf16 engine file: matrices are the torch model's bf16 weights bit for bit (q after
    undoing llama.cpp's row order), norms the same values in fp32 storage."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from spinlora.config import ModelConfig
    from spinlora.llamacpp import engine_gguf, source_gguf
    from spinlora.models import load_model

    model, _ = load_model(ModelConfig(dtype="bfloat16"))
    path = engine_gguf(source_gguf(model), torch.bfloat16, tmp_path)
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    cfg = model.config
    unpermute = LlamaTensorProcessor(config={"num_attention_heads": cfg.num_attention_heads,
                                             "num_key_value_heads": cfg.num_key_value_heads})

    def read(name):
        t = tensors[name]
        data = np.array(t.data)
        if t.tensor_type == gguf.GGMLQuantizationType.BF16:
            return torch.from_numpy(data.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(data)

    layer = model.model.layers[3]
    q = read("blk.3.attn_q.weight").float().numpy()
    q = torch.from_numpy(unpermute.process(q, "blk.3.attn_q.weight").weights)
    assert torch.equal(q, layer.self_attn.q_proj.weight.float())
    assert torch.equal(read("blk.3.ffn_down.weight"), layer.mlp.down_proj.weight)
    assert torch.equal(read("token_embd.weight"), model.model.embed_tokens.weight)
    norm = read("blk.3.attn_norm.weight")
    assert norm.dtype == torch.float32 and torch.equal(norm, layer.input_layernorm.weight.float())


@pytest.mark.slow
def test_llamacpp_greedy_tokens_are_the_torch_engines_in_fp32():
    """The embedded model in fp32 with a random LoRA on q/k/v, SVAMP prompts, continuous
    batching over fewer slots than prompts: every answer is the torch engine's, token for token,
    except that at most one of ten may part from it at a near-tie of the torch model's logits
    (``TIE``); and the LoRA acts (without it the answers change)."""
    pytest.importorskip("llama_cpp", reason="pip install 'spinlora[llamacpp]'")
    from spinlora.config import GenerationConfig, ModelConfig
    from spinlora.data import ChatFormat
    from spinlora.generate import generate
    from spinlora.models import load_model

    base, tok = load_model(ModelConfig(dtype="float32"))
    model = _lora_model(base, scale=0.02)
    fmt = ChatFormat(tok)
    rows = json.loads((SHARED / "svamp" / "SVAMP.json").read_text())[:10]
    prompts = [fmt.prompt_ids(r["Body"] + " " + r["Question"]) for r in rows]
    cfg = GenerationConfig(max_new_tokens=40, batch_size=4, decode="continuous")
    ref, n_ref = generate(model, tok, prompts, cfg, fmt.stop_ids)
    cfg.engine = "llamacpp"
    ours, n_ours = generate(model, tok, prompts, cfg, fmt.stop_ids)
    gaps = _splits(model, prompts, ours, ref)
    assert len(gaps) <= 1 and all(g < TIE for g in gaps), gaps
    if not gaps:
        assert n_ours == n_ref and [g.finished for g in ours] == [g.finished for g in ref]
    with model.disable_adapter():  # (how evaluation runs the base)
        plain, _ = generate(model, tok, prompts, GenerationConfig(max_new_tokens=40, batch_size=4),
                            fmt.stop_ids)
        plain_l, _ = generate(model, tok, prompts, cfg, fmt.stop_ids)
        gaps = _splits(model, prompts, plain_l, plain)  # against the base's own logits
    assert len(gaps) <= 1 and all(g < TIE for g in gaps), gaps
    assert sum(a.ids != b.ids for a, b in zip(plain, ref)) >= 3
    # seeded sampling: the same seed gives the same answers, another seed others
    cfg.do_sample, cfg.temperature = True, 1.0
    one, _ = generate(model, tok, prompts, cfg, fmt.stop_ids)
    two, _ = generate(model, tok, prompts, cfg, fmt.stop_ids)
    cfg.seed = 1
    three, _ = generate(model, tok, prompts, cfg, fmt.stop_ids)
    assert [g.ids for g in one] == [g.ids for g in two] != [g.ids for g in three]


@pytest.mark.slow
def test_llamacpp_refuses_base_weights_that_are_not_the_source_ggufs():
    """A method that rewrites the base (PiSSA, MiLoRA: W0 - B0·A0) must not be decoded with the
    original weights, nor one that adds weights: one weight of one layer moved by 0.01, or one
    extra parameter, is refused."""
    from spinlora.config import GenerationConfig, ModelConfig
    from spinlora.generate import generate
    from spinlora.models import load_model

    model, tok = load_model(ModelConfig(dtype="bfloat16"))
    model = _lora_model(model)
    cfg = GenerationConfig(max_new_tokens=4, batch_size=2, engine="llamacpp")
    prompt = [tok.encode("2 + 2 =")]
    if not __import__("importlib").util.find_spec("llama_cpp"):
        pytest.skip("pip install 'spinlora[llamacpp]'")
    generate(model, tok, prompt, cfg, [tok.eos_token_id])  # the unchanged base runs
    mlp = model.get_submodule("base_model.model.model.layers.0.mlp")
    mlp.register_parameter("extra", torch.nn.Parameter(torch.zeros(3)))  # BitFit-like
    with pytest.raises(ValueError, match=r"would not run \(model.layers.0.mlp.extra:"):
        generate(model, tok, prompt, cfg, [tok.eos_token_id])
    del mlp.extra
    w = model.get_submodule("base_model.model.model.layers.5.self_attn.q_proj").base_layer.weight
    with torch.no_grad():
        w[3, 7] += 0.01
    with pytest.raises(ValueError, match="layers.5.self_attn.q_proj.* not the source GGUF's"):
        generate(model, tok, prompt, cfg, [tok.eos_token_id])


@pytest.mark.slow
def test_memory_plan_knows_the_llamacpp_engine(monkeypatch):
    """With generation.engine=llamacpp the planner probes the engine itself (the base it maps
    is in the generation cost), sizes rows by llama.cpp's rounded cache, adds the mapped base
    to SPIN's step (resident from the opponent's first generation on), and leaves no engine
    loaded for the SFT that comes first."""
    pytest.importorskip("llama_cpp", reason="pip install 'spinlora[llamacpp]'")
    from spinlora import plan as planner
    from spinlora.config import load_config
    from spinlora.data import ChatFormat, build_examples, load_rows
    from spinlora.llamacpp import Engine, engine_file, slot_tokens
    from spinlora.models import load_model

    MiB = 2**20
    loads = []
    real_init = Engine.__init__

    def counted_init(self, *a, **k):
        loads.append(a[0])
        real_init(self, *a, **k)

    monkeypatch.setattr(Engine, "__init__", counted_init)
    monkeypatch.setattr(planner, "_linear", lambda *a: planner.PhaseCost(100 * MiB, 10 * MiB,
                                                                          "probe"))
    plans = {}
    for engine in ("llamacpp", "torch"):
        cfg = load_config(str(ROOT / "configs" / "demo.yaml"), [
            "model.dtype=bfloat16", "stages=[sft,spin]", f"generation.engine={engine}",
            "generation.max_new_tokens=24", "generation.batch_size=8"])
        model, tok = load_model(cfg.model)
        model = _lora_model(model)
        fmt = ChatFormat(tok)
        examples, _ = build_examples(load_rows(cfg.data.train, cfg.data, "train")[:8], fmt,
                                     cfg.data)
        plans[engine] = planner.make_plan(cfg, model, tok, examples, torch.device("cpu"),
                                          64 * 2**30)
        if engine == "llamacpp":
            path = engine_file(model)
            resident = path.stat().st_size
            assert not Engine._loaded  # unloaded for the SFT that runs first
            longest = max(len(e.prompt_ids) for e in examples)
            rows = [planner.generation_row_bytes(model, longest, 24, e)
                    for e in ("llamacpp", "torch")]
        del model
    torch_plan, plan = plans["torch"], plans["llamacpp"]
    assert plan.costs["generation"]["engine"] == "llamacpp"
    assert plan.predicted_bytes["spin"] - torch_plan.predicted_bytes["spin"] == resident
    assert plan.predicted_bytes["sft"] == torch_plan.predicted_bytes["sft"]
    assert plan.costs["generation"]["per_row"] >= rows[0] > rows[1]  # llama.cpp's rounded cache
    assert slot_tokens(longest, 24) == 256
    # the probe ran the engine itself (one load, unloaded after), and its mapped base is in the
    # fixed part in full (RSS alone read 63-100 % of it, by machine)
    assert [Path(p) for p in loads] == [path]
    assert plan.costs["generation"]["fixed"] >= resident
    assert any("llamacpp" in n for n in plan.notes)
