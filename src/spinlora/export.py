"""``spinlora export RUN_OR_ADAPTER --out DIR [--merge]``: the adapter a run chose, as a folder
anyone can load.

    spinlora export runs/demo --merge --out merged/        # transformers checkpoint, no peft
    spinlora export runs/demo/sft/adapter --out sft_lora/  # the plain peft adapter + tokenizer

A run folder gives its chosen adapter: SPIN's keep-best pick (``spin/best_adapter``), else its
last SPIN iteration, else its RL or DPO adapter, else its SFT adapter. The base model is the run's ``model.name``
(config.yaml) or, for a bare adapter folder, its ``base_model_name_or_path``; ``--model``
overrides both. With ``--merge`` the adapter is folded into the base weights (peft's
``merge_and_unload``; BitFit's biases already are weights) and saved as safetensors with the
tokenizer. The saved checkpoint is then loaded back with plain transformers and its logits are
checked against base + adapter before the folder takes its final name, so a folder under that
name always reproduces the adapter. Methods that cannot be merged (prompt learning, Houlsby
adapters) are refused with the reason.

An adapter trained with ``data.system_prompt`` or ``data.reread`` (its run's config.yaml) is
exported with a chat template rewritten to build the same prompts, so that plain
``tokenizer.apply_chat_template`` gives the model the chat it was trained in; the rewritten
template is checked against spinlora's own prompt ids before the folder is written.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml

from . import adapters, rundir
from .adapters import AdapterConfig, AdapterError
from .config import DEFAULT_MODEL, ModelConfig
from .data import READ_AGAIN

TOLERANCE = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 5e-2}  # max |Δ logit|


def chosen_adapter(source: Path) -> Path:
    """The adapter folder a run folder stands for (or ``source`` itself if it is one)."""
    if not (source / "run.json").is_file():
        return source
    spin = sorted(source.glob("spin/iter_*/adapter"), key=lambda p: int(p.parent.name[5:]))
    for cand in [source / "spin" / "best_adapter", *reversed(spin), source / "rl" / "adapter",
                 source / "dpo" / "adapter", source / "sft" / "adapter"]:
        if cand.is_dir():
            return cand
    raise AdapterError(f"run {source} holds no finished adapter (no sft/adapter, no "
                       "spin/iter_*/adapter): finish or --resume the run first")


def base_name(source: Path, adapter: Path) -> str:
    """The base model of a run folder (its config.yaml) or of an adapter folder (peft's
    ``base_model_name_or_path``).

    peft records the directory the base model was loaded from: for the embedded default that
    is its converted copy in this machine's spinlora cache, so that plain peft loads the adapter
    here. On another machine (an adapter copied over, or a cache moved) that path is absent, and
    a path ending in the embedded model's name stands for it again; any other absent path is
    refused with what to pass instead."""
    if (source / "config.yaml").is_file():
        return (yaml.safe_load((source / "config.yaml").read_text()) or {})["model"]["name"]
    peft_cfg = adapter / "adapter_config.json"
    name = None
    if peft_cfg.is_file():
        name = json.loads(peft_cfg.read_text()).get("base_model_name_or_path")
    if not name:
        raise AdapterError(f"no base model known for {adapter}: pass --model")
    if Path(name).is_absolute() and not Path(name).exists():
        if Path(name).name == DEFAULT_MODEL:
            return DEFAULT_MODEL
        raise AdapterError(
            f"{adapter} was trained on the base model at {name}, which is not on this machine: "
            "pass --model with that model (its directory, .gguf file or Hub id)")
    return name


def _trained_template(template: str, system_prompt: str | None, reread: bool) -> str:
    """``template`` (a Jinja chat template) preceded by a block that rewrites ``messages`` the way
    ``ChatFormat.messages`` builds them in training: ``system_prompt`` first when the chat has
    no system turn, and with ``reread`` every user turn as ``ChatFormat.user_text`` gives it."""
    head = ["{%- set ns = namespace(m=[]) -%}"]
    if system_prompt:
        head.append("{%- if not messages or messages[0]['role'] != 'system' -%}"
                    f"{{%- set ns.m = [{{'role': 'system', 'content': {json.dumps(system_prompt)}}}] -%}}"
                    "{%- endif -%}")
    head.append("{%- for message in messages -%}")
    if reread:
        head.append("{%- if message['role'] == 'user' and message['content'] is string -%}"
                    "{%- set ns.m = ns.m + [{'role': 'user', 'content': message['content'] + "
                    f"{json.dumps(READ_AGAIN)} + message['content']}}] -%}}"
                    "{%- else -%}{%- set ns.m = ns.m + [message] -%}{%- endif -%}")
    else:
        head.append("{%- set ns.m = ns.m + [message] -%}")
    head.append("{%- endfor -%}{%- set messages = ns.m -%}")
    return "".join(head) + template


def prompt_format(adapter: Path, tok) -> dict:
    """The chat the adapter was trained in (``data.system_prompt``, ``data.reread`` of the run
    that wrote it; defaults without a run record), written into ``tok``'s chat template when it
    differs from the template's own, so that ``apply_chat_template`` on the exported folder
    gives the model its training prompts. The result is checked against ``ChatFormat``'s own
    prompt ids for a probe chat; a template that cannot be rewritten to match is refused."""
    from .config import DataConfig
    from .data import CHAT_KEYS, ChatFormat
    from .start import trained_chat

    found = trained_chat(adapter)  # a run folder's adapter lies inside it
    fmt = found[1] if found else {k: getattr(DataConfig(), k) for k in CHAT_KEYS}  # no record
    if fmt["question_first"]:  # a sentence split: no chat template's job
        print("[spinlora] note: the adapter was trained with data.question_first: its user "
              "turns put each problem's question first, which a chat template cannot do. Build "
              "them with spinlora.data.ChatFormat(tokenizer, system_prompt, reread, "
              "question_first=True).user_text (export.json's prompt_format has the settings)")
        return {**fmt, "chat_template": "unchanged (question_first: see the note)"}
    if not fmt["system_prompt"] and not fmt["reread"]:
        return {**fmt, "chat_template": "unchanged"}
    want = ChatFormat(tok, fmt["system_prompt"], fmt["reread"])
    probe = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    want_ids = want.prompt_ids(probe)
    tok.chat_template = _trained_template(tok.chat_template, fmt["system_prompt"], fmt["reread"])
    got = list(tok.apply_chat_template([{"role": "user", "content": probe}],
                                       add_generation_prompt=True, tokenize=True,
                                       return_dict=False))
    if got != want_ids:
        raise AdapterError(
            f"the adapter was trained with data.system_prompt={fmt['system_prompt']!r} and "
            f"data.reread={fmt['reread']}, and this tokenizer's chat template could not be "
            "rewritten to give those prompts, so the exported folder would prompt the model "
            "in a format it was not trained in. Use the adapter with spinlora (`spinlora eval "
            "--adapter`), which builds its prompts itself")
    return {**fmt, "chat_template": "rewritten"}


def export(source: str | Path, out: str | Path, merge: bool = False, model: str | None = None,
           dtype: str = "float32", overwrite: bool = False) -> dict:
    """Write the chosen adapter of ``source`` (a run or adapter folder) to ``out``: as it is
    (plain peft) with the tokenizer, or with ``merge`` folded into a transformers checkpoint.
    Returns what was written (also ``out/export.json``)."""
    from .models import load_model

    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is neither a run folder nor an adapter folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty: choose another --out or pass --overwrite")
    adapter = chosen_adapter(source)
    acfg = adapters.saved_config(adapter, AdapterConfig())
    method = adapters.get(acfg.method)
    if merge and not method.mergeable:
        raise AdapterError(f"{acfg.method} cannot be merged into the base weights (its trainable "
                           "part is not a weight delta); export without --merge and load it "
                           "with peft / spinlora")
    base_id = model or base_name(source, adapter)
    base, tok = load_model(ModelConfig(name=base_id, dtype=dtype, device="cpu"))
    info = {"source": str(source), "adapter": str(adapter), "method": acfg.method,
            "base_model": base_id, "merged": merge, "dtype": dtype,
            "prompt_format": prompt_format(adapter, tok)}
    part = rundir.begin(out)
    if not merge:
        shutil.copytree(adapter, part, dirs_exist_ok=True)
        tok.save_pretrained(part)
    else:
        probe = torch.tensor([tok("Export check: 12 + 30 = 42. The quick brown fox.",
                                  add_special_tokens=False).input_ids])
        wrapped = adapters.load(base, adapter, trainable=False)
        with torch.inference_mode():
            want = wrapped(input_ids=probe).logits.float()
        merged = wrapped.merge_and_unload() if hasattr(wrapped, "merge_and_unload") else wrapped
        merged.save_pretrained(part, safe_serialization=True)
        tok.save_pretrained(part)
        del wrapped, merged
        from transformers import AutoModelForCausalLM

        back = AutoModelForCausalLM.from_pretrained(part, dtype=base.dtype).eval()
        with torch.inference_mode():
            got = back(input_ids=probe).logits.float()
        diff = float((got - want).abs().max())
        info["max_abs_logit_diff"] = diff
        if diff > TOLERANCE.get(base.dtype, 5e-2):
            shutil.rmtree(part, ignore_errors=True)
            raise AdapterError(f"the merged checkpoint does not reproduce base + adapter "
                               f"({acfg.method}: max |Δ logit| {diff:.3g}); export it without "
                               "--merge")
    rundir.finish(part, info, "export.json")
    return info
