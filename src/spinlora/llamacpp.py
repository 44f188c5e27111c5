"""Generation through llama.cpp (``llama-cpp-python``): ``generation.engine: llamacpp``.

On a CPU, generation is where every method spends its time (SPIN's opponent, RL's samples, every
evaluation). llama.cpp's decoding step is one fused C++ graph per step, where transformers runs
some thirty Python-dispatched ops per layer; ``benchmarks/generation_speed.py --sides hf,auto,llamacpp``
measures both on the same prompts.

What runs is the model spinlora has loaded, not an approximation of it:

- the base weights are the source GGUF's tensors (the embedded model and any ``.gguf`` model are
  converted from one), dequantized to the run's dtype: bf16 values exactly as torch rounds them,
  or fp32; norms stay in fp32 storage (bf16-rounded values in a bf16 run), as llama.cpp expects;
- the adapter is the live peft LoRA, written as a llama.cpp LoRA adapter GGUF on every call
  (A and B as they are in fp32, B's rows of q and k permuted as llama.cpp's rotary layout wants,
  its scale peft's own), and applied as an adapter, never merged into the base;
- the prompts go in as token ids, the same ids the torch engine gets; decoding is continuous
  batching over ``batch_size`` sequences of one llama.cpp context (a finished sequence's cache is
  cleared and its slot takes the next prompt), and each step's logits go through the torch
  engine's own bookkeeping (``generate._Rows``: greedy or sampled tokens, stop tokens, stop
  strings, the calculator).

Models that came from a Hub checkpoint have no source GGUF (its vocabulary and layout metadata
are what llama.cpp loads), so they, and adapters other than LoRA on linear layers, use the torch
engine; ``supported`` says why.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
from collections import deque
from pathlib import Path

import numpy as np
import torch

# HF module names -> the GGUF names of llama.cpp's llama / qwen2 graphs
_GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v",
               "o_proj": "attn_output", "gate_proj": "ffn_gate", "up_proj": "ffn_up",
               "down_proj": "ffn_down"}
ARCHITECTURES = {"llama", "qwen2"}  # model_type (transformers) == general.architecture (GGUF)
SLOT_ROUND = 256  # a sequence's KV cache, in tokens, is rounded up to a multiple of this


def slot_tokens(prompt_tokens: int, new_tokens: int) -> int:
    """Tokens of KV cache the engine gives each sequence of a call whose longest prompt has
    ``prompt_tokens``: prompt + new + 1, rounded up to ``SLOT_ROUND``."""
    return -(-(prompt_tokens + new_tokens + 1) // SLOT_ROUND) * SLOT_ROUND


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def source_gguf(model) -> Path | None:
    """The GGUF file the base model was converted from (``models.convert_gguf`` records it)."""
    from .models import SOURCE_FILE

    cfg = getattr(model, "config", None)
    folder = Path(getattr(cfg, "_name_or_path", "") or "")
    marker = folder / SOURCE_FILE
    if not marker.is_file():
        return None
    path = Path(json.loads(marker.read_text())["gguf"])
    return path if path.is_file() else None


def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supported(model, cfg) -> str | None:
    """None when llama.cpp can run this model and generation; else the reason it cannot."""
    from . import dist

    if not available():
        return "llama-cpp-python is not installed (pip install 'spinlora[llamacpp]')"
    p = next(model.parameters())
    if p.device.type != "cpu":
        return "the model is not on the CPU"
    if p.dtype not in (torch.float32, torch.bfloat16):
        return f"dtype {p.dtype} (llama.cpp engine: float32 or bfloat16)"
    if dist.world() > 1:
        return "several processes"
    if _base_model(model).config.model_type not in ARCHITECTURES:
        return f"model type {_base_model(model).config.model_type} (supported: {sorted(ARCHITECTURES)})"
    if getattr(_base_model(model), "hf_quantizer", None) is not None:
        return "a quantized base (QLoRA)"
    if source_gguf(_base_model(model)) is None:
        return "the base model has no source GGUF (a Hub or directory checkpoint)"
    peft_cfg = getattr(model, "peft_config", None)
    if peft_cfg:
        if len(peft_cfg) != 1:
            return "more than one adapter"
        pc = next(iter(peft_cfg.values()))
        if type(pc).__name__ != "LoraConfig":
            return f"adapter {type(pc).__name__} (llama.cpp engine: LoRA)"
        if getattr(pc, "use_dora", False):
            return "DoRA"
        unknown = set(_lora_modules(model)) - set(_GGUF_NAMES)
        if unknown:
            return f"LoRA on {sorted(unknown)}"
    return None


def _lora_modules(model) -> dict[str, list]:
    from peft.tuners.lora import LoraLayer

    out: dict[str, list] = {}
    for name, m in model.named_modules():
        if isinstance(m, LoraLayer) and m.active_adapters and not m.disable_adapters:
            out.setdefault(name.rsplit(".", 1)[-1], []).append((name, m))
    return out


def engine_file(model) -> Path:
    """The engine's base for ``model``: its source GGUF in the model's dtype, written once into
    the spinlora cache. llama.cpp maps this file, so its size is what the engine keeps resident
    beside the torch model from the first generation on."""
    from .models import cache_dir

    return engine_gguf(source_gguf(_base_model(model)), next(model.parameters()).dtype,
                       cache_dir() / "engines")


def engine_gguf(source: Path, dtype: torch.dtype, cache: Path) -> Path:
    """The source GGUF with its tensors in the run's dtype (written once into ``cache``)."""
    import gguf

    kind = "bf16" if dtype == torch.bfloat16 else "f32"
    out = cache / f"{source.stem}-{source.stat().st_size}-{kind}.gguf"
    if out.is_file() and sums_path(out).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if field.name == gguf.Keys.General.FILE_TYPE:
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if kind == "bf16"
                         else gguf.LlamaFileType.ALL_F32)
    sums = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        data = data.reshape([int(x) for x in reversed(t.shape.tolist())])
        if kind == "bf16":  # torch's rounding (to nearest, ties to even)
            data = torch.from_numpy(data).to(torch.bfloat16).float().numpy()
        sums[t.name] = _fingerprint(torch.from_numpy(data))
        if kind == "bf16" and data.ndim > 1:
            bits = torch.from_numpy(data).to(torch.bfloat16).view(torch.int16).numpy()
            writer.add_tensor(t.name, bits.view(np.uint16), raw_dtype=gguf.GGMLQuantizationType.BF16)
        else:  # fp32, and the 1-d tensors (norms) of a bf16 file: fp32 storage
            writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    sums_path(out).write_text(json.dumps(sums))
    tmp.replace(out)
    return out


def sums_path(engine_file: Path) -> Path:
    return engine_file.with_name(engine_file.name + ".sums.json")


def _fingerprint(t: torch.Tensor) -> list[float]:
    """A tensor's sum and sum of magnitudes in float64: blind to row order (llama.cpp permutes
    q's and k's rows), not to a changed value (float64 sums of the same values agree to ~1e-13)."""
    x = t.detach().double().reshape(-1)
    return [float(x.sum()), float(x.abs().sum())]


def check_base(model, engine_file: Path) -> None:
    """The torch model must be the engine file's base plus LoRA matrices: a method that rewrites
    the base (PiSSA, MiLoRA, OLoRA: W0 - B0·A0; full fine-tuning; an edited checkpoint) or adds
    weights of its own (BitFit's biases, bottleneck adapters) would otherwise be decoded without
    them. Checks every other parameter against the sums recorded at conversion; a parameter
    already matched is skipped until it changes."""
    import gguf

    base = _base_model(model)
    sums = json.loads(sums_path(engine_file).read_text())
    # every parameter is a LoRA matrix or a base tensor of the GGUF with the GGUF's values
    names = gguf.get_tensor_name_map(_arch_enum(base.config.model_type),
                                     base.config.num_hidden_layers)
    seen = set()
    for name, p in model.named_parameters():
        if ".lora_A." in name or ".lora_B." in name:  # the adapter (lora_gguf writes it)
            continue
        hf = name.removeprefix("base_model.model.").replace("base_layer.", "")
        target = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if target is None or target not in sums:
            raise ValueError(
                f"generation.engine=llamacpp: the model has a weight llama.cpp would not run "
                f"({hf}: an adapter other than LoRA, or a bias the GGUF lacks); use "
                "generation.engine=torch")
        seen.add(target)
        stamp = (str(engine_file), p._version)
        if getattr(p, "_spinlora_llamacpp", None) == stamp:
            continue
        want, got = sums[target], _fingerprint(p)
        if not all(abs(a - b) <= 1e-9 * max(1.0, abs(a)) for a, b in zip(want, got)):
            raise ValueError(
                f"generation.engine=llamacpp: the model's {hf} is not the source GGUF's "
                "(an adapter method that rewrites the base weights, such as PiSSA, MiLoRA or "
                "full fine-tuning, or an edited checkpoint); use generation.engine=torch")
        p._spinlora_llamacpp = stamp  # matched; checked again once the tensor changes
    missing = set(sums) - seen - {"output.weight"}  # a tied head has no tensor of its own
    if missing:
        raise ValueError(f"generation.engine=llamacpp: no model weight for {sorted(missing)[:3]}")


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf's row permutation of a llama q/k weight (rotary pairs interleaved)."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def lora_gguf(model, out: Path) -> Path | None:
    """The model's active LoRA as a llama.cpp adapter GGUF; None when it has none."""
    import gguf

    mods = _lora_modules(model)
    if not mods:
        return None
    cfg = _base_model(model).config
    arch = cfg.model_type
    names = gguf.get_tensor_name_map(_arch_enum(arch), cfg.num_hidden_layers)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    ranks = set()
    tensors = []
    for short, layers in mods.items():
        for name, m in layers:
            key = m.active_adapters[0]
            a = m.lora_A[key].weight.detach().float().numpy()
            b = m.lora_B[key].weight.detach().float().numpy() * float(m.scaling[key])
            hf = name.split("base_model.model.", 1)[-1]
            target = names.get_name(hf + ".weight", try_suffixes=(".weight",))
            if target is None:
                raise ValueError(f"llama.cpp engine: no GGUF name for {hf}")
            if arch == "llama" and short in ("q_proj", "k_proj"):
                heads = cfg.num_attention_heads if short == "q_proj" else cfg.num_key_value_heads
                b = _permute(b, heads)
            ranks.add(a.shape[0])
            tensors.append((target, a, b))
    # llama.cpp scales A·B by alpha / rank; the scale is folded into B, so alpha = rank
    if len(ranks) != 1:
        raise ValueError(f"llama.cpp engine: LoRA ranks differ across layers ({sorted(ranks)})")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(ranks.pop()))
    for target, a, b in tensors:
        writer.add_tensor(target + ".lora_a", np.ascontiguousarray(a))
        writer.add_tensor(target + ".lora_b", np.ascontiguousarray(b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(out)
    return out


def _arch_enum(arch: str):
    import gguf

    for k, v in gguf.MODEL_ARCH_NAMES.items():
        if v == arch:
            return k
    raise ValueError(f"llama.cpp engine: unknown architecture {arch}")


class Engine:
    """One llama.cpp model (the base, in the run's dtype) kept for a process's generate calls;
    a context per call, sized for its prompts."""

    _loaded: dict[str, "Engine"] = {}

    def __init__(self, path: Path, threads: int):
        import llama_cpp as L

        self.L, self.path, self.threads = L, path, threads
        L.llama_backend_init()
        L.llama_log_set(_quiet_log, ctypes.c_void_p(0))
        params = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab_size = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))

    @classmethod
    def get(cls, path: Path, threads: int) -> "Engine":
        key = f"{path}:{threads}"
        if key not in cls._loaded:
            cls.unload()  # one base model at a time
            cls._loaded[key] = cls(path, threads)
        return cls._loaded[key]

    @classmethod
    def unload(cls) -> None:
        """Free the loaded model (its mapping leaves the process's resident memory)."""
        for engine in cls._loaded.values():
            if engine.model:
                engine.L.llama_model_free(engine.model)
                engine.model = None
        cls._loaded.clear()

    def run(self, prompts: list[list[int]], slots: int, cfg, rows_state, lora: Path | None,
            kv_f32: bool, on_done=None) -> None:
        """Decode every prompt (continuous batching); ``rows_state`` is a ``generate._Rows``
        for ``len(prompts)`` rows, which gets every step's logits and keeps the answers."""
        L = self.L
        slots = max(1, min(slots, len(prompts)))
        per_seq = slot_tokens(max(len(p) for p in prompts), cfg.max_new_tokens)
        cp = L.llama_context_default_params()
        cp.n_ctx = per_seq * slots
        cp.n_seq_max = slots
        # measured on 2 cores (SmolLM2, bf16, 32 sequences; benchmarks/results/llamacpp_settings.md):
        # micro-batches of 2048 tokens prefill 30 % faster than 512; a cache per sequence
        # (kv_unified off) decodes 1.9x faster than one shared buffer; f16 keys and values
        # with flash attention 1.5x faster than bf16 without it
        cp.n_ubatch = max(2048, slots)
        cp.n_batch = max(cp.n_ubatch, slots + max(len(p) for p in prompts))
        cp.n_threads = cp.n_threads_batch = self.threads
        cp.kv_unified = False
        cp.flash_attn_type = 1
        cp.no_perf = True
        cp.type_k = cp.type_v = 0 if kv_f32 else 1  # GGML_TYPE_F32 / GGML_TYPE_F16
        ctx = L.llama_init_from_model(self.model, cp)
        if not ctx:
            raise RuntimeError("llama.cpp could not create a context "
                               f"({slots} sequences x {per_seq} tokens): lower generation.batch_size")
        adapter = None
        batch = L.llama_batch_init(cp.n_batch, 0, 1)
        try:
            if lora is not None:
                adapter = L.llama_adapter_lora_init(self.model, str(lora).encode())
                if not adapter:
                    raise RuntimeError(f"llama.cpp could not load the adapter {lora}")
                arr = (L.llama_adapter_lora_p_ctypes * 1)(adapter)
                scales = (ctypes.c_float * 1)(1.0)
                L.llama_set_adapters_lora(ctx, arr, 1, scales)
            self._loop(ctx, batch, prompts, slots, rows_state, on_done)
        finally:
            L.llama_batch_free(batch)
            L.llama_free(ctx)
            if adapter is not None:
                L.llama_adapter_lora_free(adapter)

    def _decode(self, ctx, batch, items: list[tuple[int, int, int, bool]]) -> np.ndarray:
        """One llama_decode of (token, position, sequence, wants logits) items; returns the
        logits of the items that want them, in order."""
        L = self.L
        batch.n_tokens = len(items)
        for i, (t, p, s, want) in enumerate(items):
            batch.token[i] = t
            batch.pos[i] = p
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = s
            batch.logits[i] = want
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc}): the context is full or out of memory; "
                               "lower generation.batch_size or max_new_tokens")
        n = sum(1 for it in items if it[3])
        ptr = L.llama_get_logits(ctx)
        return np.ctypeslib.as_array(ptr, shape=(n, self.vocab_size))

    def _loop(self, ctx, batch, prompts, slots, st, on_done) -> None:
        """Every llama_decode call carries one token of each running sequence and the whole
        prompts of those admitted into free slots (as llama.cpp's server batches), so a refill
        never costs a call of its own and prefill runs in wide micro-batches."""
        L = self.L
        mem = L.llama_get_memory(ctx)
        cap = L.llama_n_batch(ctx)
        pending = deque(range(len(prompts)))
        slot_row: list[int | None] = [None] * slots  # the prompt each slot answers
        pos = [0] * slots
        last = [0] * slots
        reported = 0
        while True:
            live = [s for s in range(slots) if slot_row[s] is not None]
            items = [(last[s], pos[s], s, True) for s in live]
            admitted = []
            for s in range(slots):
                if not pending:
                    break
                if slot_row[s] is not None:
                    continue
                if items and len(items) + len(prompts[pending[0]]) > cap:
                    break
                r = pending.popleft()
                L.llama_memory_seq_rm(mem, s, -1, -1)
                ids = prompts[r]
                items.extend((t, k, s, k == len(ids) - 1) for k, t in enumerate(ids))
                slot_row[s], pos[s] = r, len(ids) - 1
                admitted.append(s)
            if not items:
                break
            logits = torch.from_numpy(self._decode(ctx, batch, items))
            order = live + admitted
            for s in order:
                pos[s] += 1
            done = [False] * len(order)
            tok = st.take([slot_row[s] for s in order], logits, done).tolist()
            for s, t, d in zip(order, tok, done):
                last[s] = t
                if d:
                    slot_row[s] = None
            if on_done and st.ended > reported:
                on_done(st.ended - reported)
                reported = st.ended


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _quiet_log(level, text, user_data):  # llama.cpp's own log: errors only
    if level == 4:  # GGML_LOG_LEVEL_ERROR
        import sys

        sys.stderr.write(text.decode(errors="replace"))
