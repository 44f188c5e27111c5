"""Training-loop precision and memory settings on the tiny model: bf16 gives finite losses close
to fp32's with the adapter kept in fp32, a non-finite gradient stops the stage before the
optimizer step (naming the step), and offloaded activations change nothing but where they live."""
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
            ctx.shape = x.shape
            return x.new_zeros(())

        @staticmethod
        def backward(ctx, g):
            return torch.full(ctx.shape, float("nan"))

    return F.apply(p)


def test_offloaded_activations_give_the_same_training(tiny_cfg, monkeypatch):
    """train.offload_activations: the forward pass saves its activations through
    torch.autograd.graph.save_on_cpu (pack hooks run), and training is unchanged: the same
    losses and the same adapter as without."""
    import spinlora.train as T

    packed = []
    real = torch.autograd.graph.save_on_cpu

    class Counting(real):
        def __init__(self, pin_memory=False, device_type="cuda"):
            super().__init__(pin_memory, device_type)
            pack = self.pack_hook

            def counting(t):
                packed.append(t.shape)
                return pack(t)

            self.pack_hook = counting

    monkeypatch.setattr(T.torch.autograd.graph, "save_on_cpu", Counting)
    plain, plain_lora = _sft_losses(tiny_cfg, "float32")
    assert not packed
    tiny_cfg.train.offload_activations = True
    off, off_lora = _sft_losses(tiny_cfg, "float32")
    assert len(packed) > 100  # every saved activation of every micro-batch
    assert off == plain
    for a, b in zip(plain_lora, off_lora):
        assert torch.equal(a, b)
