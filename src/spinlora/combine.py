"""``spinlora combine --out DIR ADAPTER=WEIGHT ...``: one LoRA adapter whose weight change is an
exact weighted sum of others', ΔW = Σ wᵢ·ΔWᵢ, saved in plain peft format.

    # extrapolation past a method's end point (ExPO, Zheng et al. 2024, arXiv 2402.16827):
    # θ_sft + 2·(θ_irpo − θ_sft)
    spinlora combine --out runs/x/expo2 runs/s/irpo/spin/iter_2/adapter=2 runs/s/main/sft/adapter=-1
    # task arithmetic: both methods' displacements from their common SFT start
    spinlora combine --out runs/x/sum runs/s/irpo/spin/iter_2/adapter=1 \\
        runs/s/grpo/rl/adapter=1 runs/s/main/sft/adapter=-1

peft's ``add_weighted_adapter`` with ``combination_type="cat"`` does the work: the ranks add up
(A's rows, each scaled by wᵢ and adapter i's own scaling, stacked; B's columns beside them), so
the sum is exact, not an SVD approximation. Before the folder takes its final name every adapted
layer's ΔW is checked against Σ wᵢ·ΔWᵢ in fp32. Only plain LoRA combines this way: DoRA's
magnitudes, the PiSSA family's rewritten base (its converted plain LoRA does combine), prompt
learning and the other methods are refused with the reason.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from . import adapters, export, rundir
from .adapters import AdapterConfig, AdapterError
from .config import ModelConfig

TOLERANCE = 1e-5  # max |ΔW − Σ wᵢ·ΔWᵢ| relative to max |Σ wᵢ·ΔWᵢ|, fp32


def parse_terms(terms: list[str]) -> list[tuple[Path, float]]:
    """``PATH=WEIGHT`` strings (the weight after the last ``=``) as (path, weight)."""
    out = []
    for t in terms:
        path, sep, w = t.rpartition("=")
        try:
            weight = float(w)
        except ValueError:
            weight = None
        if not sep or not path or weight is None or not math.isfinite(weight):
            raise AdapterError(f"{t!r}: write each adapter as PATH=WEIGHT, e.g. "
                               "runs/x/sft/adapter=-1")
        out.append((Path(path), weight))
    return out


def _lora_folder(path: Path) -> Path:
    """The plain LoRA folder of a saved adapter (a base-rewriting init's converted one)."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such adapter folder")
    acfg = adapters.saved_config(path, AdapterConfig())
    if acfg.method != "lora" or not (path / "adapter_config.json").is_file():
        raise AdapterError(f"{path}: a {acfg.method} adapter; only plain LoRA weight changes "
                           "add up exactly (DoRA's magnitudes, prompts and the other methods "
                           "do not)")
    c = json.loads((path / "adapter_config.json").read_text())
    if c.get("peft_type", "LORA") != "LORA" or c.get("use_dora"):
        raise AdapterError(f"{path}: not a plain LoRA adapter (peft_type "
                           f"{c.get('peft_type')}, use_dora {c.get('use_dora')})")
    return path


def _base_name(folders: list[Path]) -> str:
    names = {export.base_name(f, f) for f in folders}
    if len(names) > 1:
        raise AdapterError(f"the adapters were trained on different base models ({sorted(names)}): "
                           "their weight changes do not add up; pass --model only if they are "
                           "the same model under two names")
    return names.pop()


def combine(terms: list[tuple[Path, float]], out: str | Path, model: str | None = None,
            overwrite: bool = False) -> dict:
    """Write the adapter with ΔW = Σ wᵢ·ΔWᵢ over ``terms`` (adapter folder, weight) to ``out``;
    returns what was written (also ``out/combine.json``)."""
    from peft import PeftModel
    from peft.tuners.lora.layer import LoraLayer
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from .models import load_model

    out = Path(out)
    if not terms:
        raise AdapterError("nothing to combine: give at least one PATH=WEIGHT")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty: choose another --out or pass --overwrite")
    folders = [_lora_folder(Path(p)) for p, _ in terms]
    weights = [float(w) for _, w in terms]
    base_name = model or _base_name(folders)
    base, tok = load_model(ModelConfig(name=base_name, dtype="float32", device="cpu"))
    names = [f"a{i}" for i in range(len(folders))]
    wrapped = PeftModel.from_pretrained(base, str(folders[0]), adapter_name=names[0])
    for name, folder in zip(names[1:], folders[1:]):
        wrapped.load_adapter(str(folder), adapter_name=name)
    wrapped.add_weighted_adapter(names, weights, "combined", combination_type="cat")

    worst, layers = 0.0, 0
    with torch.no_grad():
        for m in wrapped.modules():
            if not isinstance(m, LoraLayer) or "combined" not in m.lora_A:
                continue
            want = sum(w * m.get_delta_weight(n) for n, w in zip(names, weights) if n in m.lora_A)
            got = m.get_delta_weight("combined")
            scale = float(want.abs().max()) or 1.0
            worst = max(worst, float((got - want).abs().max()) / scale)
            layers += 1
    if layers == 0:
        raise AdapterError("the combined adapter adapts no layer (the adapters share no target "
                           "module)")
    if not worst <= TOLERANCE:  # NaN fails too
        raise AdapterError(f"the combined adapter's ΔW is off the weighted sum by {worst:.3g} "
                           "(relative): not written")

    part = rundir.begin(out)
    state = get_peft_model_state_dict(wrapped, adapter_name="combined")
    save_file({k: v.contiguous() for k, v in state.items()},
              str(part / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = wrapped.peft_config["combined"]
    # where the base was loaded from, as peft records it for a trained adapter (the embedded
    # default's converted copy here): plain peft then loads the result on this machine
    cfg.base_model_name_or_path = getattr(base, "name_or_path", None) or base_name
    cfg.inference_mode = True
    cfg.save_pretrained(str(part))
    tok.save_pretrained(part)
    info = {"terms": [{"adapter": str(f), "weight": w} for f, w in zip(folders, weights)],
            "base_model": base_name, "r": cfg.r, "lora_alpha": cfg.lora_alpha,
            "layers": layers, "max_rel_delta_error": worst}
    rundir.finish(part, info, "combine.json")
    return info
