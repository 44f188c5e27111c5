"""bf16 on CPUs that have it: ``model.dtype: auto`` follows the CPU's bf16 units, bf16 on a CPU
gets attention with fp32 scores and an fp32 LM head, threads never oversubscribe the cores, and
the step-0 checks of SPIN (every loss) and RL hold exactly in bf16: the reference passes score the very
micro-batches that training computes."""
import copy
import json
from pathlib import Path

import pytest
import torch

from spinlora.accounting import Accountant
from spinlora.adapters import attach
from spinlora.data import ChatFormat, build_examples, load_rows
from spinlora.losses import step0_value
from spinlora import models
from spinlora.accounting import environment
from spinlora.models import (CPU_ATTENTION, cpu_has_bf16, cpu_info, load_model, pick_attention,
                             pick_dtype, set_cpu_threads)
from spinlora.stages.sft import sft_objective
from spinlora.stages.spin import make_pairs, reference_pass, spin_objective
from spinlora.train import MetricsLog, train_loop

CPU = torch.device("cpu")


CPUINFO = """processor\t: 0
model name\t: AMD EPYC 9R14
flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 sse2
processor\t: 1
model name\t: AMD EPYC 9R14
flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 sse2
"""


def test_cpu_info_reads_the_model_and_the_bf16_instruction_sets(tmp_path, monkeypatch):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert cpu_info(str(path)) == {"model": "AMD EPYC 9R14",
                                   "isa": ["avx512_bf16", "avx512_vnni", "avx512f", "avx2"]}
    path.write_text(CPUINFO.replace(" avx512_bf16", "").replace("AMD EPYC 9R14", "Old CPU"))
    assert cpu_info(str(path))["isa"] == ["avx512_vnni", "avx512f", "avx2"]
    assert cpu_info(str(tmp_path / "missing")) == {"model": None, "isa": []}
    # the dtype choice reads the same record
    monkeypatch.delenv("SPINLORA_CPU_BF16", raising=False)
    monkeypatch.setattr(models, "cpu_info", lambda: {"model": "x", "isa": ["amx_bf16"]})
    assert cpu_has_bf16()
    monkeypatch.setattr(models, "cpu_info", lambda: {"model": "x", "isa": ["avx2"]})
    assert not cpu_has_bf16()
    # and every run's record names its CPU: bf16 answers differ between CPUs
    monkeypatch.setattr(models, "cpu_info", lambda: {"model": "Test CPU", "isa": ["avx2"]})
    assert environment()["cpu"] == {"model": "Test CPU", "isa": ["avx2"]}


def test_auto_dtype_follows_the_cpus_bf16_units(monkeypatch):
    monkeypatch.setenv("SPINLORA_CPU_BF16", "1")
    assert pick_dtype("auto", CPU) == torch.bfloat16
    assert pick_attention(None, CPU, torch.bfloat16, "llama") == CPU_ATTENTION
    assert pick_attention("sdpa", CPU, torch.bfloat16, "llama") == "sdpa"  # an explicit choice
    assert pick_attention(None, CPU, torch.bfloat16, "gemma2") is None  # soft-capped: its own
    monkeypatch.setenv("SPINLORA_CPU_BF16", "0")
    assert pick_dtype("auto", CPU) == torch.float32
    assert pick_attention(None, CPU, torch.float32, "llama") is None
    assert pick_dtype("bfloat16", CPU) == torch.bfloat16  # explicit dtypes are never changed


def test_threads_are_shared_between_local_processes(monkeypatch):
    import os

    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0))
    try:
        torch.set_num_threads(cores)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores * 2))
        assert set_cpu_threads() == 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        assert set_cpu_threads() == 1  # only ever lowered: OMP_NUM_THREADS / the user's choice
    finally:
        torch.set_num_threads(before)


def _bf16_setup(cfg, sft_steps=2, attention=None):
    cfg = copy.deepcopy(cfg)
    cfg.model.dtype = "bfloat16"
    cfg.model.attn_implementation = attention
    torch.manual_seed(0)
    model, tok = load_model(cfg.model)
    assert model.config._attn_implementation == (attention or CPU_ATTENTION)
    fmt = ChatFormat(tok)
    examples, _ = build_examples(load_rows(cfg.data.train, cfg.data, "train")[:8], fmt, cfg.data)
    model = attach(model, cfg.adapter)
    cfg.train.warmup_ratio = 0.0
    train_loop(model, examples, sft_objective(tok.pad_token_id), cfg.train, 1e-2,
               sft_steps * cfg.train.batch_size / len(examples), Accountant(CPU),
               MetricsLog(None), 0, "sft")  # Δθ_0 ≠ 0
    return cfg, model, tok, fmt, examples


@pytest.mark.parametrize("q_len, mask_heads", [(7, 1), (1, 1), (7, 4)])
def test_cpu_attention_is_fp32_softmax_attention(q_len, mask_heads):
    """The bf16 CPU attention equals softmax(QKᵀ·scale + mask)·V computed in fp64, to bf16
    rounding of the output; transformers' eager attention (scores rounded to bf16) is further.
    A prefill (causal mask), a decoding step (one query, left padding), a per-head mask."""
    from transformers.models.llama.modeling_llama import eager_attention_forward

    from spinlora.models import cpu_attention

    torch.manual_seed(0)
    q = (torch.randn(2, 4, q_len, 16) * 3).bfloat16()
    k, v = (torch.randn(2, 2, 7, 16) * 3).bfloat16(), torch.randn(2, 2, 7, 16).bfloat16()
    low = torch.finfo(torch.bfloat16).min  # what transformers masks with
    mask = torch.full((7, 7), low).triu(1)[-q_len:][None, None].repeat(2, 1, 1, 1)
    mask[1, ..., :2] = low  # row 1 is left-padded by two
    mask = mask.repeat(1, mask_heads, 1, 1)
    if mask_heads > 1:
        mask[:, 3, :, 4] = low  # one head may not see column 4
    module = torch.nn.Module()
    module.num_key_value_groups, module.training = 2, False
    kk, vv = (x.double().repeat_interleave(2, 1) for x in (k, v))
    exact = torch.softmax(q.double() @ kk.transpose(2, 3) * 0.25 + mask.double(), -1) @ vv
    exact = exact.transpose(1, 2)
    ours, weights = cpu_attention(module, q, k, v, mask.bfloat16(), 0.25)
    theirs, _ = eager_attention_forward(module, q, k, v, mask.bfloat16(), 0.25)
    err = lambda x: float((x.double() - exact).abs().max())  # noqa: E731
    assert ours.dtype == torch.bfloat16 and ours.shape == theirs.shape
    assert weights.shape == (2, 4, q_len, 7)
    assert err(ours) <= 2 ** -8 * float(exact.abs().max())
    assert err(ours) < err(theirs)


def test_fp32_head_on_a_bf16_cpu_model(tiny_cfg):
    from spinlora.scoring import output_head

    _, model, _, _, _ = _bf16_setup(tiny_cfg, sft_steps=0)
    head = model.get_output_embeddings()
    assert head.weight.dtype == torch.bfloat16
    h = torch.randn(5, head.weight.shape[1], dtype=torch.bfloat16) * 4
    got = output_head(model)(h)
    assert got.dtype == torch.float32
    assert torch.equal(got, h.float() @ head.weight.float().T)


def _batch_dependent(module, monkeypatch):
    """Make ``module.score_answers`` depend on what else is in the batch, as SmolLM2's bf16
    kernels do (0.03-0.3 nats with other padding; the tiny model's kernels happen not to): a
    row's log-prob gets 1e-3 x its place in the batch x the batch's longest answer added."""
    real = module.score_answers

    def scored(model, prompts, answers, pad_id, *args, **kwargs):
        sums, counts, hit = real(model, prompts, answers, pad_id, *args, **kwargs)
        longest = max(len(a) for per in answers for a in per)
        return sums + 1e-3 * longest * torch.arange(1, len(sums) + 1), counts, hit

    monkeypatch.setattr(module, "score_answers", scored)


@pytest.mark.parametrize("loss", ["sigmoid", "dpop", "ipo", "sigmoid_nll", "dpop divergence"])
def test_spin_step0_is_exact_in_bf16(tiny_cfg, loss, monkeypatch):
    import spinlora.stages.spin as sp

    loss, _, tokens = loss.partition(" ")
    _batch_dependent(sp, monkeypatch)
    cfg, model, tok, fmt, examples = _bf16_setup(tiny_cfg)
    cfg.spin.loss = loss
    cfg.generation.max_new_tokens = 24
    pairs, _, _ = make_pairs(model, tok, fmt, examples, cfg, Accountant(CPU), "opp")
    if tokens:  # spin.pair_tokens=divergence: the parts of y and y', and the whole gold answer
        assert sp.cut_at_divergence(pairs) >= 1
    lengths = {len(p.prompt_ids) + len(p.gen_ids) for p in pairs}
    assert len(pairs) >= 4 and len(lengths) > 1  # micro-batches pad their rows differently
    cfg.train.batch_size, cfg.train.micro_batch_size = 4, 2
    units = reference_pass(model, pairs, tok.pad_token_id, Accountant(CPU),
                           cfg.train.micro_batch_size)
    assert sorted(i for u in units for i in u) == list(range(len(pairs)))
    beta = 0.1
    records = train_loop(model, pairs, spin_objective(tok.pad_token_id, beta, cfg.spin), cfg.train,
                         1e-2, 2, Accountant(CPU), MetricsLog(None), 1, "spin", units=units)
    assert records[0]["pref_loss"] == pytest.approx(step0_value(loss, beta), abs=1e-6)
    assert records[0]["margin"] == 0.0


def test_rl_step0_ratio_is_exact_in_bf16(tiny_cfg, monkeypatch):
    import spinlora.stages.rl as rl
    from spinlora import adapters
    from spinlora.config import GenerationConfig
    from spinlora.generate import generate
    from spinlora.stages.rl import Sample, old_and_ref, rl_objective

    _batch_dependent(rl, monkeypatch)
    cfg, model, tok, fmt, examples = _bf16_setup(tiny_cfg)
    start = adapters.snapshot(model)
    prompts = [e.prompt_ids for e in examples for _ in range(4)]
    gens, _ = generate(model, tok, prompts, GenerationConfig(
        max_new_tokens=16, do_sample=True, temperature=1.0, batch_size=64), fmt.stop_ids)
    samples = [Sample(p, g.ids, float(i % 2) - 0.5) for i, (p, g) in enumerate(zip(prompts, gens))]
    assert len({len(s.gen_ids) for s in samples}) > 1
    cfg.train.batch_size, cfg.train.micro_batch_size = 8, 4
    units, _ = old_and_ref(model, samples, start, tok.pad_token_id, 4, 1.0)
    records = train_loop(model, samples, rl_objective(tok.pad_token_id, 0.04, 0.2), cfg.train,
                         1e-2, 1, Accountant(CPU), MetricsLog(None), 1, "rl", units=units)
    assert records[0]["ratio"] == 1.0 and records[0]["kl"] == 0.0
    assert records[-1]["ratio"] != 1.0  # the policy moved, and the ratio shows it


def test_units_keep_their_members_across_epochs(tiny_cfg):
    """train_loop(units=...) shuffles whole micro-batches: every pass over an item has the
    same companions."""
    from spinlora.train import Objective

    seen = []
    obj = Objective(loss=lambda m, items: (sum(p.sum() for p in m.parameters()
                                               if p.requires_grad) * 0, seen.append(sorted(items))
                                          or {}),
                    weight=lambda items: float(len(items)), tokens=lambda items: len(items))
    model = torch.nn.Linear(2, 1)
    cfg = copy.deepcopy(tiny_cfg.train)
    cfg.batch_size, cfg.micro_batch_size = 4, 2
    units = [[0, 1], [2, 3], [4, 5], [6]]
    train_loop(model, list(range(7)), obj, cfg, 1e-3, 3, Accountant(CPU), MetricsLog(None), 0,
               "u", units=units)
    assert len(seen) == 12 and all(s in units for s in seen)
    assert seen[:4] != seen[4:8] or seen[4:8] != seen[8:]  # the order is shuffled per epoch


def test_epoch_items_replace_the_items_each_epoch(tiny_cfg):
    """train_loop(epoch_items=...): epoch 0 trains on the items given, epoch e on
    epoch_items(e), each item once an epoch; a later epoch with another count is refused."""
    from spinlora.train import Objective

    seen = []
    obj = Objective(loss=lambda m, items: (sum(p.sum() for p in m.parameters()
                                               if p.requires_grad) * 0, seen.extend(items)
                                          or {}),
                    weight=lambda items: float(len(items)), tokens=lambda items: len(items))
    model = torch.nn.Linear(2, 1)
    cfg = copy.deepcopy(tiny_cfg.train)
    cfg.batch_size, cfg.micro_batch_size = 4, 2
    asked = []

    def later(e):
        asked.append(e)
        return [100 * e + i for i in range(6)]

    train_loop(model, list(range(6)), obj, cfg, 1e-3, 3, Accountant(CPU), MetricsLog(None), 0,
               "e", epoch_items=later)
    assert asked == [1, 2] and len(seen) == 18
    assert sorted(seen[:6]) == list(range(6)) and sorted(seen[6:12]) == list(range(100, 106))
    assert sorted(seen[12:]) == list(range(200, 206))
    with pytest.raises(ValueError, match="5 items for epoch 2, not 6"):
        train_loop(model, list(range(6)), obj, cfg, 1e-3, 2, Accountant(CPU), MetricsLog(None),
                   0, "e", epoch_items=lambda e: list(range(5)))


def test_the_lm_head_gets_a_contiguous_input(tiny_cfg):
    """A prefill that keeps the last position's logits hands the head a strided view; on a CPU
    a strided 3-D linear copies the whole weight once per row (pytorch/pytorch#151934), so
    load_model makes the head's input contiguous."""
    model, _ = load_model(tiny_cfg.model)
    seen = []
    model.get_output_embeddings().register_forward_hook(
        lambda m, args, out: seen.append(args[0].is_contiguous()))
    ids = torch.randint(5, 50, (3, 7))
    with torch.inference_mode():
        full = model(input_ids=ids).logits[:, -1]
        last = model(input_ids=ids, logits_to_keep=1).logits[:, -1]
    assert seen == [True, True]
    torch.testing.assert_close(full, last)


def test_packed_linears_give_the_same_tokens(tiny_cfg):
    """While generating, a bf16 CPU model's frozen linear layers run from oneDNN-packed
    weights: the same logits as the plain layers, restored afterwards, an adapter's own
    trainable matrices left alone."""
    from spinlora.generate import can_pack, packed_linears, packs_linears

    cfg = copy.deepcopy(tiny_cfg)
    cfg.model.dtype = "bfloat16"
    model, _ = load_model(cfg.model)
    if not can_pack(torch.bfloat16):  # a CPU without bf16 kernels (AVX2): nothing is packed
        assert not packs_linears(model)
        with packed_linears(model) as n:
            assert n == 0
        return
    assert packs_linears(model)
    model = attach(model, cfg.adapter)
    torch.nn.init.normal_(next(p for n, p in model.named_parameters() if "lora_B" in n))
    ids = torch.randint(5, 50, (3, 9))
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        with packed_linears(model) as n:
            packed = model(input_ids=ids).logits
            swapped = [m for m in model.modules()
                       if type(m) is torch.nn.Linear and "forward" in vars(m)]
        after = model(input_ids=ids).logits
    frozen = [m for m in model.modules() if type(m) is torch.nn.Linear
              and not m.weight.requires_grad]
    assert n == len(frozen) == len(swapped) > 0
    assert all(not m.weight.requires_grad for m in swapped)  # LoRA A/B not among them
    assert not any(type(m) is torch.nn.Linear and "forward" in vars(m) for m in model.modules())
    assert torch.equal(packed, plain) and torch.equal(after, plain)


def test_fp32_generation_packs_every_frozen_linear(tiny_cfg):
    """In fp32 every frozen linear layer runs from packed weights while generating (MKL's
    product repacks the weight on every call), an adapter's own matrices left alone; the logits
    stay within fp32 rounding of F.linear's, the greedy tokens are the same, and
    ``generation.packed: false`` keeps every layer plain."""
    from spinlora.config import GenerationConfig
    from spinlora.generate import generate, packed_linears, packed_what
    from spinlora.models import load_tokenizer

    model, _ = load_model(tiny_cfg.model)
    assert next(model.parameters()).dtype == torch.float32
    model = attach(model, tiny_cfg.adapter)
    torch.nn.init.normal_(next(p for n, p in model.named_parameters() if "lora_B" in n))
    assert packed_what(model) == "onednn_packed"
    assert packed_what(model, GenerationConfig(packed=False)) == "plain"
    frozen = [m for m in model.modules() if type(m) is torch.nn.Linear
              and not m.weight.requires_grad]
    ids = torch.randint(5, 50, (3, 9))
    with torch.inference_mode():
        plain = model(input_ids=ids).logits
        with packed_linears(model) as n:
            swapped = [m for m in model.modules() if type(m) is torch.nn.Linear
                       and "forward" in vars(m)]
            packed = model(input_ids=ids).logits
        with packed_linears(model, GenerationConfig(packed=False)) as off:
            assert off == 0
    assert n == len(frozen) == len(swapped) > 1 and model.get_output_embeddings() in swapped
    assert all(not m.weight.requires_grad for m in swapped)  # LoRA A/B not among them
    assert not any(type(m) is torch.nn.Linear and "forward" in vars(m) for m in model.modules())
    torch.testing.assert_close(packed, plain, rtol=1e-4, atol=1e-4)
    tok = load_tokenizer(tiny_cfg.model.name)
    prompts = [[1, 5, 6, 7, 8, 9], [1, 5], [1, 5, 6, 7]]
    on, _ = generate(model, tok, prompts, GenerationConfig(max_new_tokens=12), stop_ids=[2])
    off, _ = generate(model, tok, prompts, GenerationConfig(max_new_tokens=12, packed=False),
                      stop_ids=[2])
    assert [g.ids for g in on] == [g.ids for g in off]


def test_a_run_says_when_the_cpu_has_no_bf16_units(monkeypatch, tiny_model_dir, tiny_data,
                                                   tmp_path, capsys):
    """model.dtype=auto on a CPU without bf16 units runs in fp32 and says why, and that the
    README's demo time came from a CPU with them; with bf16 units it says neither."""
    from spinlora.config import load_config
    from spinlora.pipeline import run

    def line(bf16: str, name: str) -> str:
        monkeypatch.setenv("SPINLORA_CPU_BF16", bf16)
        run(load_config(None, [
            f"output_dir={tmp_path / name}", f"model.name={tiny_model_dir}", "model.dtype=auto",
            f"data.train={tiny_data / 'train.jsonl'}", f"data.eval={tiny_data / 'test.jsonl'}",
            "stages=[eval]", "eval.models=[base]", "eval.limit=2", "generation.max_new_tokens=4"]))
        return next(x for x in capsys.readouterr().out.splitlines()
                    if x.startswith("[spinlora] model in"))

    fp32 = line("0", "fp32")
    assert fp32.startswith("[spinlora] model in float32 (model.dtype=auto: no bf16 units")
    assert "README's demo time" in fp32
    bf16 = line("1", "bf16")
    assert bf16.startswith("[spinlora] model in bfloat16 (model.dtype=auto),")


def test_packed_copy_only_where_it_fits(tiny_cfg, monkeypatch, capsys):
    """The packed copy is made only where it takes at most half the memory a run has left,
    decided once per model (every call and run.json agree), said once, recorded; generation
    then multiplies the plain weights and gives the tokens generation.packed=false gives."""
    import spinlora.generate as G
    from spinlora.config import GenerationConfig
    from spinlora.models import load_tokenizer
    from spinlora.pipeline import run

    model = attach(load_model(tiny_cfg.model)[0], tiny_cfg.adapter)
    need = G.packed_copy_bytes(model)  # every fp32 linear layer's weight (LoRA's A, B: ~0)
    assert need == sum(m.weight.numel() * 4 for m in model.modules()
                       if type(m) is torch.nn.Linear) > 0
    monkeypatch.setattr(G, "free_memory", lambda device: 2 * need - 1)  # half is just short
    assert not G.packs_linears(model) and G.packed_what(model) == "plain"
    with torch.inference_mode(), G.packed_linears(model) as n:
        assert n == 0 and not any(type(m) is torch.nn.Linear and "forward" in vars(m)
                                  for m in model.modules())
    assert capsys.readouterr().out.count("generation multiplies the plain weights") == 1
    assert G.packing_skipped(model) == {"copy_bytes": need, "room_bytes": 2 * need - 1,
                                        "share": 0.5}
    tok = load_tokenizer(tiny_cfg.model.name)
    prompts = [[1, 5, 6, 7, 8, 9], [1, 5]]
    on, _ = G.generate(model, tok, prompts, GenerationConfig(max_new_tokens=8), stop_ids=[2])
    off, _ = G.generate(model, tok, prompts, GenerationConfig(max_new_tokens=8, packed=False),
                        stop_ids=[2])
    assert [g.ids for g in on] == [g.ids for g in off]
    fresh, _ = load_model(tiny_cfg.model)  # another model decides afresh: half fits
    monkeypatch.setattr(G, "free_memory", lambda device: 2 * need)
    assert G.packs_linears(fresh) and G.packing_skipped(fresh) is None
    # a run records the choice it made right after loading
    monkeypatch.setattr(G, "free_memory", lambda device: need)
    tiny_cfg.stages = ["eval"]
    tiny_cfg.eval.models = ["base"]
    run(tiny_cfg)
    pr = json.loads((Path(tiny_cfg.output_dir) / "run.json").read_text())["precision"]
    assert pr["generation_linears"] == "plain"
    skipped = pr["packed_copy_skipped"]
    assert skipped["room_bytes"] == need and 0.5 * need < skipped["copy_bytes"] <= need


def test_upcast_reuses_one_workspace_without_autograd_only():
    """Without autograd, ``upcast`` writes the fp32 copy into one workspace a slot (a decoding
    step's caches no longer get fresh memory per layer, which the run's 4 MB mmap threshold
    turned into page faults); the values are ``t.float()``'s. With autograd each call gets its
    own copy, which a backward pass may read after the next layer's call."""
    from spinlora.models import _WORKSPACE, release_workspace, upcast

    torch.manual_seed(0)
    a, b = torch.randn(4, 3, 40, 8).bfloat16(), torch.randn(4, 3, 33, 8).bfloat16()
    with torch.inference_mode():
        first = upcast(a, 0)
        assert torch.equal(first, a.float())
        second = upcast(b, 0)  # smaller: the same memory
        assert torch.equal(second, b.float()) and second.data_ptr() == first.data_ptr()
        other = upcast(a, 1)  # another slot: other memory
        assert other.data_ptr() != second.data_ptr() and torch.equal(other, a.float())
        assert upcast(a.float(), 0).data_ptr() != first.data_ptr()  # fp32 stays itself
    release_workspace()
    assert not _WORKSPACE
    q = torch.randn(4, 3, 1, 8, requires_grad=True)
    k1, k2 = upcast(a, 0), upcast(b, 0)
    assert k1.data_ptr() != k2.data_ptr() and not _WORKSPACE
    (q @ k1.transpose(2, 3)).sum().backward()
    assert torch.allclose(q.grad, a.float().sum(2, keepdim=True))


def test_a_phase_start_releases_the_upcast_workspace():
    """``release_free_memory`` (every phase's start) frees what a no-grad scoring pass left in
    ``upcast``'s workspace, so that the next phase's peak does not carry it."""
    from spinlora.accounting import release_free_memory
    from spinlora.models import _WORKSPACE, upcast

    with torch.no_grad():
        upcast(torch.ones(2, 3, 5, 8, dtype=torch.bfloat16), 0)
    assert _WORKSPACE
    release_free_memory()
    assert not _WORKSPACE


def test_generation_through_the_workspace_keeps_the_tokens(tiny_cfg, monkeypatch):
    """A bf16 CPU model (``spinlora_cpu`` attention) generates the same greedy tokens with the
    shared fp32 workspace as with a fresh copy per layer, and the workspace is gone after."""
    from spinlora import generate as G
    from spinlora.config import GenerationConfig
    from spinlora.models import _WORKSPACE

    cfg = copy.deepcopy(tiny_cfg)
    cfg.model.dtype = "bfloat16"
    model, tok = load_model(cfg.model)
    assert model.config._attn_implementation == CPU_ATTENTION
    model = attach(model, cfg.adapter)
    torch.nn.init.normal_(next(p for n, p in model.named_parameters() if "lora_B" in n))
    prompts = [list(range(5, 5 + n)) for n in (3, 9, 14, 6, 11)]
    gen = GenerationConfig(max_new_tokens=16, batch_size=5)
    calls = []
    real = models.upcast
    spy = lambda t, slot: calls.append(slot) or real(t, slot)  # noqa: E731
    monkeypatch.setattr(models, "upcast", spy)
    monkeypatch.setattr(G, "upcast", spy)
    ours, n = G.generate(model, tok, prompts, gen, stop_ids=[])
    assert not _WORKSPACE and {0, 1, 2} <= set(calls)
    fresh = lambda t, slot: t.float()  # noqa: E731
    monkeypatch.setattr(models, "upcast", fresh)
    monkeypatch.setattr(G, "upcast", fresh)
    ref, n_ref = G.generate(model, tok, prompts, gen, stop_ids=[])
    assert [g.ids for g in ours] == [g.ids for g in ref] and n == n_ref == 5 * 16


def test_methods_that_train_the_base_weights_keep_fp32(monkeypatch, tiny_model_dir, tiny_data,
                                                       tmp_path, capsys):
    """Full fine-tuning and BitFit train the model's own tensors: over bf16 weights most of
    AdamW's updates round away, so ``auto`` loads fp32 for them (and says why), an explicit bf16
    is kept with a warning, LoRA keeps bf16, and Houlsby's modules are fp32 over a bf16 base."""
    from spinlora.adapters import AdapterConfig, model_config
    from spinlora.config import ModelConfig, load_config
    from spinlora.pipeline import run

    auto = ModelConfig(name=str(tiny_model_dir), dtype="auto")
    assert model_config(auto, "full").dtype == "float32"
    assert model_config(auto, "bitfit").dtype == "float32"
    assert model_config(auto, "lora") is auto
    explicit = ModelConfig(name=str(tiny_model_dir), dtype="bfloat16")
    assert model_config(explicit, "full") is explicit

    # the trap itself, on the tiny model: one AdamW step at lr 2e-5 leaves most bf16 weights as
    # they were, and changes every fp32 one
    def changed(dtype):
        model = load_model(ModelConfig(name=str(tiny_model_dir), dtype=dtype))[0]
        for p in model.parameters():
            p.requires_grad_(True)
        before = [p.detach().clone() for p in model.parameters()]
        ids = torch.arange(3, 40).unsqueeze(0)
        model(input_ids=ids, labels=ids).loss.backward()
        torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0).step()
        moved = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before))
        return moved / sum(b.numel() for b in before)

    assert changed("bfloat16") < 0.5 and changed("float32") > 0.99

    monkeypatch.setenv("SPINLORA_CPU_BF16", "1")

    def start(name, *extra):
        result = run(load_config(None, [
            f"output_dir={tmp_path / name}", f"model.name={tiny_model_dir}",
            f"data.train={tiny_data / 'train.jsonl'}", f"data.eval={tiny_data / 'test.jsonl'}",
            "data.sft_examples=4", "train.batch_size=4", "train.micro_batch_size=4",
            "stages=[sft]", *extra]))
        out = capsys.readouterr().out.splitlines()
        run_json = json.loads((tmp_path / name / "run.json").read_text())
        return result, run_json["precision"]["dtype"], out

    _, dtype, out = start("full", "adapter.method=full", "model.dtype=auto")
    assert dtype == "float32"
    assert any(x.startswith("[spinlora] model in float32 (model.dtype=auto: adapter.method=full "
                            "trains the model's own weights") for x in out)
    _, dtype, out = start("bitfit16", "adapter.method=bitfit", "adapter.add_biases=true",
                          "model.dtype=bfloat16")
    assert dtype == "bfloat16"
    assert any("warning: adapter.method=bitfit trains the model's own weights in bfloat16" in x
               for x in out)
    # a run that continues a BitFit adapter (--adapter) trains the adapter's method, whatever
    # adapter.method says (a full fine-tuning checkpoint is passed as --model instead)
    from spinlora.start import run_method
    cont = load_config(None, [f"model.name={tiny_model_dir}"])
    cont.sft_adapter = str(tmp_path / "bitfit16" / "sft" / "adapter")
    assert cont.adapter.method == "lora" and run_method(cont) == "bitfit"
    _, dtype, out = start("lora", "model.dtype=auto")
    assert dtype == "bfloat16" and not any("warning" in x for x in out)

    base = load_model(ModelConfig(name=str(tiny_model_dir), dtype="bfloat16"))[0]
    wrapped = attach(base, AdapterConfig(method="houlsby"))
    trained = [p for p in wrapped.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    ids = torch.arange(3, 20).unsqueeze(0)
    with torch.no_grad():
        plain = load_model(ModelConfig(name=str(tiny_model_dir), dtype="bfloat16"))[0]
        assert torch.equal(wrapped(input_ids=ids).logits, plain(input_ids=ids).logits)
