"""Adapter methods: one small module per method, one registry entry each.

    spinlora methods                       # the table: name, paper, what the method supports

``attach(model, cfg)`` makes the trainable model (peft methods wrap the model in a PeftModel; the
hand-written ones change it in place: BitFit unfreezes biases, Houlsby wraps layers, MiLoRA /
PiSSA / OLoRA rewrite the base weights as W0 − B·A, as peft does). ``save`` writes an adapter
folder: plain peft for peft's methods; for PiSSA / MiLoRA / OLoRA the folder holds a plain LoRA
that applies to the *original* base (rank 2r, ΔW = s·(B·A − B0·A0)) and ``raw/`` the weights
for the rewritten base; BitFit / Houlsby keep ``spinlora_adapter.safetensors`` + ``.json``; full
fine-tuning saves a transformers checkpoint. ``load`` reads any of them back.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import adalora, bitfit, houlsby, ia3, lora, milora, prompt, weightlora


@dataclass
class AdapterConfig:
    """The trainable part. LoRA in q/k/v by default (W = W0 + (alpha/r)·B·A).

    ``method`` is one entry of ``REGISTRY`` below (``spinlora methods`` lists them);
    each method reads the fields it needs and ignores the rest.
    """

    method: str = "lora"
    r: int = 8  # rank (LoRA family), final average rank (AdaLoRA)
    alpha: float = 16.0
    dropout: float = 0.0  # >0 makes the SPIN step-0 check (loss = ln 2) approximate
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj"])
    init_r: int = 12  # AdaLoRA: starting rank per module, pruned to an average of r
    keep_top_k: int | None = None  # WeightLoRA: adapters kept after training (None: half)
    num_virtual_tokens: int = 20  # prompt / prefix / P-tuning
    encoder_hidden_size: int = 128  # P-tuning's prompt encoder, prefix tuning's projection
    bottleneck_size: int = 64  # Houlsby adapters: x + W_up σ(W_down x)
    add_biases: bool = False  # BitFit on models without biases (Llama): add zero biases first
    # LoRA family: the adapter's product added by one addmm in the base's dtype
    # (lora.fused_forward); false: peft's own forward (fp32 products over a bf16 base)
    fused: bool = True


class AdapterError(ValueError):
    """An adapter method or saved adapter that cannot be used as asked."""


@dataclass(frozen=True)
class Method:
    name: str
    paper: str
    build: Callable  # (model, cfg) -> trainable model
    count: Callable  # (base model, cfg, targets) -> trainable parameters by the method's formula
    kind: str = "peft"  # peft | state (spinlora file of trainable tensors) | full
    targets: tuple | None = None  # layers it adapts (None: adapter.target_modules)
    identity_at_init: bool = True  # output unchanged before training
    mergeable: bool = True  # can be folded into the base weights
    rewrites_base: bool = False  # PiSSA family: base weights become W0 − B·A
    gradient_checkpointing: bool = True
    quantized_base: bool = True  # trains on a 4-bit / 8-bit base
    finish: Callable | None = None  # (model, cfg) -> dict | None, after each training stage
    on_step: Callable | None = None  # (model, step) after each optimizer step
    regularizer: Callable | None = None  # (model) -> extra loss per optimizer step
    set_total_steps: Callable | None = None
    keep_raw: bool = False  # also save the tensors as in memory (peft saves AdaLoRA pruned,
    # prefix tuning's MLP output)
    # it trains the base model's own tensors, in the model's dtype (full fine-tuning, BitFit):
    # over bf16 weights most of AdamW's updates round away, so model.dtype=auto loads fp32
    trains_base: bool = False

    @property
    def base_from_init(self) -> bool:
        """The base model's output comes from the method's saved initial state, not from
        switching a peft adapter off (non-peft methods, base-rewriting inits)."""
        return self.kind != "peft" or self.rewrites_base


def _full_build(model, cfg):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


REGISTRY: dict[str, Method] = {m.name: m for m in [
    Method("lora", "Hu et al. 2021, arXiv 2106.09685", lora.build, lora.lora_count),
    Method("dora", "Liu et al. 2024, arXiv 2402.09353",
           lambda m, c: lora.build(m, c, use_dora=True), lora.dora_count),
    Method("pissa", "Meng et al. 2024, arXiv 2404.02948",
           lambda m, c: lora.build(m, c, init="pissa_niter_4"), lora.lora_count,
           rewrites_base=True, quantized_base=False),
    Method("milora", "Wang et al. 2024, arXiv 2406.09044", milora.build, lora.lora_count,
           rewrites_base=True, quantized_base=False),
    Method("olora", "Büyükakyüz 2024, arXiv 2406.01775",
           lambda m, c: lora.build(m, c, init="olora"), lora.lora_count,
           rewrites_base=True, quantized_base=False),
    Method("adalora", "Zhang et al. 2023, arXiv 2303.10512", adalora.build, adalora.count,
           on_step=adalora.on_step, regularizer=adalora.regularizer,
           set_total_steps=adalora.set_total_steps, keep_raw=True),
    Method("weightlora", "Veprikov et al. 2025, arXiv 2506.02724", weightlora.build,
           weightlora.count, finish=weightlora.finish),
    Method("ia3", "Liu et al. 2022, arXiv 2205.05638", ia3.build, ia3.count,
           targets=tuple(ia3.TARGETS)),
    Method("bitfit", "Ben Zaken et al. 2022, arXiv 2106.10199", bitfit.build, bitfit.count,
           kind="state", quantized_base=False, trains_base=True),
    Method("houlsby", "Houlsby et al. 2019, arXiv 1902.00751", houlsby.build, houlsby.count,
           kind="state", targets=houlsby.TARGETS, mergeable=False),
    *[Method(k, paper, lambda m, c, k=k: prompt.build(m, c, k),
             lambda m, c, t, k=k: prompt.count(m, c, k), identity_at_init=False, keep_raw=True,
             mergeable=False, gradient_checkpointing=k in ("prompt", "ptuning"))
      for k, paper in [("prompt", "Lester et al. 2021, arXiv 2104.08691"),
                       ("prefix", "Li & Liang 2021, arXiv 2101.00190"),
                       ("ptuning", "Liu et al. 2021, arXiv 2103.10385"),
                       ("ptuning_v2", "Liu et al. 2022, arXiv 2110.07602")]],
    Method("full", "full fine-tuning (the reference)", _full_build,
           lambda m, c, t: sum(p.numel() for p in m.parameters()), kind="full",
           quantized_base=False, trains_base=True),
]}


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise AdapterError(f"unknown adapter.method {name!r}; available: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def model_config(model_cfg, method_name: str):
    """The model config a training run of ``method_name`` loads: ``model.dtype=auto`` becomes
    float32 for a method that trains the base model's own tensors (``trains_base``). In bf16 one
    AdamW step at lr 2e-5 changed 3.7 % of SmolLM2's weights in full fine-tuning (2e-4: 28.8 %;
    fp32: 100 %): the rest rounded away. An explicit dtype is kept."""
    if model_cfg.dtype == "auto" and get(method_name).trains_base:
        return dataclasses.replace(model_cfg, dtype="float32")
    return model_cfg


def bf16_trap(model, method_name: str) -> str | None:
    """A warning when ``model`` is in a 16-bit dtype and the method trains its own tensors."""
    if get(method_name).trains_base and model.dtype in (torch.bfloat16, torch.float16):
        return (f"adapter.method={method_name} trains the model's own weights in "
                f"{str(model.dtype).removeprefix('torch.')}, where most of AdamW's small updates "
                "round away: set model.dtype=float32 (or auto, which picks it for this method)")
    return None


def targets(model, method: Method, cfg: AdapterConfig) -> list[tuple[str, torch.nn.Module]]:
    """The base layers a method adapts, as (name, module)."""
    names = method.targets or tuple(cfg.target_modules)
    return [(n, m) for n, m in model.named_modules()
            if n.rsplit(".", 1)[-1] in names and hasattr(m, "out_features")]


def _is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def attach(model, cfg: AdapterConfig):
    """Make ``model`` trainable with ``cfg.method``; returns the model to train (a PeftModel for
    peft's methods). The base model is changed in place (peft injects layers into it)."""
    method = get(cfg.method)
    if method.targets is None and method.kind == "peft" and method.identity_at_init:
        # the methods that adapt adapter.target_modules (not the virtual-token ones)
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [t for t in cfg.target_modules if t not in names]
        if missing:
            raise AdapterError(f"adapter.target_modules {missing} not found in "
                               f"{type(model).__name__}; linear layers here include: "
                               f"{sorted(_linear_names(model))}")
    if _is_quantized(model) and not method.quantized_base:
        raise AdapterError(f"adapter.method={cfg.method} cannot run on a quantised base "
                           "(it needs to read or train the full-precision weights); use "
                           "model.quantization=none, or lora / dora / adalora / ia3 / houlsby")
    try:
        built = method.build(model, cfg)
    except bitfit.BitFitError as e:
        raise AdapterError(str(e)) from None
    if cfg.fused and method.kind == "peft":
        lora.use_fused(built)
    return built


def _linear_names(model) -> set[str]:
    return {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


# ---------------------------------------------------------------- save / load

STATE_FILE, STATE_JSON = "spinlora_adapter.safetensors", "spinlora_adapter.json"
RAW_FILE = "spinlora_raw.safetensors"  # tensors as in memory, for swapping adapters in place


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def snapshot(model) -> dict[str, torch.Tensor]:
    """A copy of the trainable tensors, in place on their device (``restore`` puts it back)."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def restore(model, state: dict[str, torch.Tensor]) -> None:
    """Set the trainable tensors to a ``snapshot``, in place (the model is changed)."""
    for n, p in model.named_parameters():
        if n in state:
            p.copy_(state[n])


@contextlib.contextmanager
def adapter_state(model, state: dict[str, torch.Tensor]):
    """The trainable tensors set to ``state`` for the block, then put back as they were."""
    saved = snapshot(model)
    restore(model, state)
    try:
        yield
    finally:
        restore(model, saved)


def at_state(model, state: dict[str, torch.Tensor]) -> bool:
    """Whether the trainable tensors equal ``state`` exactly."""
    return all(torch.equal(p, state[n]) for n, p in model.named_parameters()
               if p.requires_grad and n in state)


def save(model, cfg: AdapterConfig, path: str | Path, init_path: str | Path | None = None) -> None:
    """Write the adapter folder at ``path`` (see the module docstring for the formats). Launched
    with several processes, only the main one writes (the others hold the same adapter)."""
    from safetensors.torch import save_file

    from .. import dist

    if not dist.is_main():
        return
    method = get(cfg.method)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if method.kind == "full":
        _plain(model).save_pretrained(path)
    elif method.kind == "state":
        save_file(_trainable_state(model), str(path / STATE_FILE))
        (path / STATE_JSON).write_text(json.dumps(
            {"method": cfg.method, "config": dataclasses.asdict(cfg)}, indent=2))
    elif method.rewrites_base:
        model.save_pretrained(path / "raw")
        if init_path is not None:
            _save_converted(model, path, Path(init_path))
    else:
        model.save_pretrained(path)
        if method.keep_raw:
            save_file(_trainable_state(model), str(path / RAW_FILE))


def _plain(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _save_converted(model, path: Path, init_path: Path) -> None:
    """A plain LoRA on the original base: ΔW = s·(B·A − B0·A0) = s'·[B, −B0]·[A; A0] with rank 2r
    and alpha 2·alpha (so s' = s). What peft's ``path_initial_model_for_weight_conversion`` does,
    for every base-rewriting init (peft's only knows its own)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    cur = get_peft_model_state_dict(model)
    init = load_file(str(init_path / "raw" / "adapter_model.safetensors"))
    out = {}
    for k, v in cur.items():
        if "lora_A" in k:
            out[k] = torch.cat([v.cpu(), init[k]], 0).contiguous()
        elif "lora_B" in k:
            out[k] = torch.cat([v.cpu(), -init[k]], 1).contiguous()
    save_file(out, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    c = json.loads((path / "raw" / "adapter_config.json").read_text())
    c.update(r=2 * c["r"], lora_alpha=2 * c["lora_alpha"], init_lora_weights=True,
             rank_pattern={k: 2 * v for k, v in (c.get("rank_pattern") or {}).items()},
             alpha_pattern={k: 2 * v for k, v in (c.get("alpha_pattern") or {}).items()})
    (path / "adapter_config.json").write_text(json.dumps(c, indent=2))


def load_base_view(model, cfg: AdapterConfig, init_path: str | Path | None):
    """Make ``model`` compute the base model's output; returns a context manager to run it in.

    peft's own methods switch the adapter off (``disable_adapter``). The others load the state the
    method started from, which is the base by construction (PiSSA family: W0 − B0·A0 + B0·A0;
    BitFit: the original or zero biases; Houlsby: W_up = 0; full: the original weights); the
    caller loads other weights afterwards."""
    if not get(cfg.method).base_from_init:
        return model.disable_adapter()
    if init_path is None:
        raise AdapterError(f"{cfg.method}: the base view needs the saved initial adapter")
    load_weights(model, cfg, init_path)
    return contextlib.nullcontext()


def load_weights(model, cfg: AdapterConfig, path: str | Path) -> None:
    """Load a saved adapter's weights into the adapter already in ``model`` (same method and
    shapes): evaluation swaps adapters this way, with one model in memory."""
    from safetensors.torch import load_file

    method, path = get(cfg.method), Path(path)
    if method.keep_raw and (path / RAW_FILE).is_file():
        missing, unexpected = model.load_state_dict(load_file(str(path / RAW_FILE)), strict=False)
        if unexpected:
            raise AdapterError(f"{path}: saved tensors do not match the model's {cfg.method} adapter")
        return
    if method.kind == "peft":
        from peft.utils import set_peft_model_state_dict

        src = path / "raw" if method.rewrites_base else path
        set_peft_model_state_dict(model, load_file(str(src / "adapter_model.safetensors")))
        return
    if method.kind == "full":
        files = sorted(path.glob("model*.safetensors"))
        state = {k: v for f in files for k, v in load_file(str(f)).items()}
    else:
        state = load_file(str(path / STATE_FILE))
    missing, unexpected = _plain(model).load_state_dict(state, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if unexpected or (method.kind == "state" and set(state) != trainable):
        raise AdapterError(f"{path}: saved tensors do not match the model's {cfg.method} adapter")


def load(model, path: str | Path, trainable: bool = True, fused: bool = True):
    """Wrap ``model`` with the saved adapter at ``path`` (any format ``save`` writes, or a plain
    peft folder from elsewhere); ``fused``: LoRA layers through ``lora.fused_forward``."""
    path = Path(path)
    if (path / STATE_JSON).is_file():
        acfg = dataclasses.replace(saved_config(path, AdapterConfig()), fused=fused)
        model = attach(model, acfg)
        load_weights(model, acfg, path)
        if not trainable:
            for p in model.parameters():
                p.requires_grad_(False)
        return model
    _check_peft_folder(path)
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
    if trainable and not any(p.requires_grad for p in peft_model.parameters()):
        raise AdapterError(f"adapter {path} loaded with no trainable parameters")
    if fused:
        lora.use_fused(peft_model)
    return peft_model


def _check_peft_folder(path: Path) -> None:
    if (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise AdapterError(f"{path} is a full model checkpoint (full fine-tuning): pass it as "
                           "model.name (--model), not as an adapter")
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"{path} holds no adapter_config.json: pass a folder written by "
                           "spinlora (e.g. RUN/sft/adapter) or by peft's save_pretrained")


def saved_config(path: str | Path, default: AdapterConfig) -> AdapterConfig:
    """The adapter config a saved folder was made with: spinlora's own json, or peft's (then
    ``lora`` with the saved rank; training continues as plain peft)."""
    path = Path(path)
    if (path / STATE_JSON).is_file():
        return AdapterConfig(**json.loads((path / STATE_JSON).read_text())["config"])
    _check_peft_folder(path)
    c = json.loads((path / "adapter_config.json").read_text())
    peft_type = c.get("peft_type", "LORA").lower()
    method = {"lora": "dora" if c.get("use_dora") else "lora", "adalora": "adalora", "ia3": "ia3",
              "prompt_tuning": "prompt", "p_tuning": "ptuning",
              "prefix_tuning": "prefix" if c.get("prefix_projection") else "ptuning_v2"}.get(peft_type, "lora")
    return dataclasses.replace(default, method=method, r=c.get("r") or default.r,
                               alpha=c.get("lora_alpha") or default.alpha)


def table() -> list[dict]:
    """One row per method, for ``spinlora methods`` and the docs."""
    return [{"method": m.name, "paper": m.paper, "saved as": {"peft": "peft", "state": "spinlora file",
             "full": "transformers checkpoint"}[m.kind] + (" (+ converted plain LoRA)" if m.rewrites_base else ""),
             "identity at init": m.identity_at_init, "mergeable": m.mergeable,
             "gradient checkpointing": m.gradient_checkpointing, "4/8-bit base": m.quantized_base}
            for m in REGISTRY.values()]
