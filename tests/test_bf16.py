"""Training-loop precision and memory settings on the tiny model: bf16 gives finite losses close
to fp32's with the adapter kept in fp32, a non-finite gradient stops the stage before the
optimizer step (naming the step), and offloaded activations change nothing but where they live."""
import contextlib
import copy

import pytest
import torch

from spinlora.accounting import Accountant
from spinlora.adapters import attach
from spinlora.data import ChatFormat, build_examples, load_rows
from spinlora.models import load_model
from spinlora.stages.sft import sft_objective
from spinlora.train import MetricsLog, TrainingDiverged, train_loop


def _sft_losses(cfg, dtype, steps=4):
    cfg = copy.deepcopy(cfg)
    cfg.model.dtype = dtype
    torch.manual_seed(0)
    model, tok = load_model(cfg.model)
    examples, _ = build_examples(load_rows(cfg.data.train, cfg.data, "train")[:8], ChatFormat(tok),
                                 cfg.data)
    model = attach(model, cfg.adapter)
    cfg.train.warmup_ratio = 0.0
    records = train_loop(model, examples, sft_objective(tok.pad_token_id), cfg.train, 1e-2,
                         steps * cfg.train.batch_size / len(examples), Accountant(torch.device("cpu")),
                         MetricsLog(None), 0, f"sft-{dtype}")
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    return [r["loss"] for r in records], lora


def test_bf16_sft_is_finite_and_close_to_fp32(tiny_cfg):
    fp32, _ = _sft_losses(tiny_cfg, "float32")
    bf16, lora = _sft_losses(tiny_cfg, "bfloat16")
    assert len(bf16) == len(fp32) == 4
    assert all(torch.isfinite(torch.tensor(bf16)))
    for a, b in zip(fp32, bf16):
        assert b == pytest.approx(a, rel=0.03), (fp32, bf16)
    # peft keeps the adapter in fp32 on a bf16 base: Adam's moments never underflow in bf16
    assert lora and all(p.dtype == torch.float32 for p in lora)


def test_nonfinite_gradient_stops_before_the_step(tiny_cfg, monkeypatch):
    model, tok = load_model(tiny_cfg.model)
    examples, _ = build_examples(load_rows(tiny_cfg.data.train, tiny_cfg.data, "train")[:8],
                                 ChatFormat(tok), tiny_cfg.data)
    model = attach(model, tiny_cfg.adapter)
    obj = sft_objective(tok.pad_token_id)
    real = obj.loss

    def poisoned(m, items):  # the loss value stays finite, its gradient is NaN
        loss, metrics = real(m, items)
        p = next(q for q in m.parameters() if q.requires_grad)
        return loss + _nan_grad(p), metrics

    obj.loss = poisoned
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(TrainingDiverged, match="gradient norm is nan at step 0"):
        train_loop(model, examples, obj, tiny_cfg.train, 1e-2, 1, Accountant(torch.device("cpu")),
                   MetricsLog(None), 0, "sft")
    for n, p in model.named_parameters():
        if n in before:
            assert torch.equal(p, before[n]), f"{n} changed although the step was refused"


def _nan_grad(p):
    """Zero in the forward pass, NaN gradient for ``p`` in the backward pass."""
    class F(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.shape, ctx.device = x.shape, x.device
            return x.new_zeros(())

        @staticmethod
        def backward(ctx, g):  # on the parameter's device (the test also runs on a GPU)
            return torch.full(ctx.shape, float("nan"), device=ctx.device)

    return F.apply(p)


def test_offloaded_activations_give_the_same_training(tiny_cfg, monkeypatch):
    """train.offload_activations: the forward pass's saved tensors go through spinlora's pack hook
    (copied to host memory; on a CPU a copy all the same), and training is unchanged: the same
    losses and the same adapter as without."""
    import spinlora.train as T

    packed = []
    real = T._pack_for_host

    def counting(t, pin_memory):
        out = real(t, pin_memory)
        packed.append(out is not t)  # True: copied to the host
        return out

    monkeypatch.setattr(T, "_pack_for_host", counting)
    plain, plain_lora = _sft_losses(tiny_cfg, "float32")
    assert not packed
    tiny_cfg.train.offload_activations = True
    off, off_lora = _sft_losses(tiny_cfg, "float32")
    assert sum(packed) > 100  # every contiguous activation of every micro-batch
    assert off == plain
    for a, b in zip(plain_lora, off_lora):
        assert torch.equal(a, b)


def test_offloading_keeps_parameters_and_strided_tensors_where_they_are():
    """The memory-efficient SDPA kernel's backward needs its attention bias back with the padded
    row stride it was saved with; torch's save_on_cpu returned it contiguous and the backward
    failed on CUDA ("attn_bias is not correctly aligned"). Non-contiguous tensors and parameters
    stay; a contiguous activation comes back equal, from a host copy."""
    from spinlora.train import _pack_for_host, _unpack_from_host

    padded = torch.randn(2, 1, 5, 8)[..., :7]  # a row-padded buffer's slice, as that kernel saves
    weight = torch.nn.Parameter(torch.randn(3, 3), requires_grad=False)
    for t in (padded, weight, weight.t()):
        assert _pack_for_host(t, False) is t
        assert _unpack_from_host(_pack_for_host(t, False)) is t
    assert _unpack_from_host(_pack_for_host(padded, False)).stride() == (40, 40, 8, 1)
    act = torch.randn(4, 6)
    device, host = _pack_for_host(act, False)
    assert host is not act and host.data_ptr() != act.data_ptr()
    back = _unpack_from_host((device, host))
    assert torch.equal(back, act) and back.device == act.device


def test_half_precision_training_on_cuda_avoids_the_memory_efficient_sdpa_kernel():
    """On CUDA with a bf16/fp16 model, training forwards run SDPA without its memory-efficient
    kernel (its masked bf16 backward gave a NaN gradient on an H100 and an H200); fp32 and CPU
    models keep every kernel."""
    from spinlora.train import training_attention

    cpu_bf16 = torch.nn.Linear(2, 2).to(torch.bfloat16).requires_grad_(False)
    assert isinstance(training_attention(cpu_bf16), contextlib.nullcontext)
    if torch.cuda.is_available():
        gpu = torch.nn.Linear(2, 2).cuda().to(torch.bfloat16).requires_grad_(False)
        with training_attention(gpu):
            assert not torch.backends.cuda.mem_efficient_sdp_enabled()
            assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.math_sdp_enabled()
        gpu32 = torch.nn.Linear(2, 2).cuda().requires_grad_(False)
        assert isinstance(training_attention(gpu32), contextlib.nullcontext)
