"""The Bradley–Terry reward model as a scorer: loading it (fresh for training, or a saved
``reward/adapter``), r(x, y) per sequence, and text scoring for best-of-n reranking and SPIN's
``keep_best: heldout_reward``. Training it is the ``reward`` stage (``stages/reward.py``);
evaluation and the stages both use this module, which imports neither.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .adapters import AdapterError
from .config import RunConfig
from .data import ChatFormat
from .models import (ModelNotFoundError, load_tokenizer, pick_device, pick_dtype,
                     resolve_model_path)


def _dtype(cfg: RunConfig, device: torch.device) -> torch.dtype:
    """The policy's dtype, except that ``auto`` stays fp32 on a CPU: the reward head is trained
    whole (not an adapter), and bf16 weights lose AdamW's small updates."""
    if cfg.model.dtype == "auto" and device.type == "cpu":
        return torch.float32
    return pick_dtype(cfg.model.dtype, device)


def _seq_cls(path: str, **kwargs):
    """``AutoModelForSequenceClassification.from_pretrained`` of a causal-LM checkpoint. Its
    scalar head is never in the checkpoint (a fresh one is trained, a saved one comes back with
    the adapter), so transformers' load report, a table saying so, is silenced; any other
    missing weight is still reported, as a warning of ours."""
    import logging
    import warnings

    from transformers import AutoModelForSequenceClassification

    log = logging.getLogger("transformers.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, output_loading_info=True, **kwargs)
    finally:
        log.setLevel(level)
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("score.")]
    if missing:
        warnings.warn(f"reward model from {path}: weights not in the checkpoint, initialised "
                      f"at random: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return model


def load_reward_model(cfg: RunConfig):
    """(scalar-head model with LoRA on the body, tokenizer)."""
    from peft import LoraConfig, get_peft_model

    if cfg.adapter.method not in ("lora", "dora"):
        raise AdapterError(f"the reward model trains LoRA or DoRA (adapter.method="
                           f"{cfg.adapter.method!r} is not supported here)")
    path = resolve_model_path(cfg.model.name)
    device = pick_device(cfg.model.device)
    tok = load_tokenizer(path, cfg.model.revision)
    torch.manual_seed(cfg.seed)  # the head's initialisation
    model = _seq_cls(path, dtype=_dtype(cfg, device), revision=cfg.model.revision)
    model.config.pad_token_id = tok.pad_token_id
    a = cfg.adapter
    model = get_peft_model(model, LoraConfig(
        r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=list(a.target_modules),
        task_type="SEQ_CLS", use_dora=a.method == "dora"))
    return model.to(device), tok


def rewards(model, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """r(x, y) per sequence: the scalar head on the last real token's hidden state."""
    clf, body = _body(model)
    device = next(model.parameters()).device
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    ids, mask = ids.to(device), mask.to(device)
    hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
    last = hidden[torch.arange(len(seqs), device=device), mask.sum(1) - 1]
    return clf.score(last).squeeze(-1).float()


def _body(model):
    clf = model.get_base_model()
    return clf, getattr(clf, clf.base_model_prefix)


def rewards_shared(model, prompts: list[list[int]], answers: list[list[list[int]]],
                   pad_id: int) -> torch.Tensor:
    """r(x, y) for every answer of every prompt (prompt 0's answers first), each prompt run once
    under all of its answers (``scoring.prompt_then_answers``): the same numbers as ``rewards``
    on the concatenated sequences, with the prompt's tokens encoded once instead of per answer."""
    from .scoring import prompt_then_answers

    clf, body = _body(model)
    states, _, lengths = prompt_then_answers(body, prompts, answers, pad_id)
    # the state after the answer's last token: the prompt's last where the answer is empty
    final = states[torch.arange(states.shape[0], device=states.device), lengths]
    return clf.score(final).squeeze(-1).float()


def pair_rewards(model, chosen: list[list[int]], rejected: list[list[int]],
                 prompt_lens: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(r(x, y_w), r(x, y_l)) for Bradley–Terry pairs given as whole sequences whose first
    ``prompt_lens[i]`` tokens are the shared prompt. The prompt runs once under both answers
    unless a length is 0 or activation checkpointing is on (it turns the KV cache off); then
    each sequence runs whole. Differentiable unless called under inference mode."""
    from .scoring import _checkpointing

    clf, _ = _body(model)
    if all(prompt_lens) and not _checkpointing(clf):
        r = rewards_shared(model, [c[:k] for c, k in zip(chosen, prompt_lens)],
                           [[c[k:], j[k:]] for c, j, k in zip(chosen, rejected, prompt_lens)],
                           pad_id)
        return r[0::2], r[1::2]
    r = rewards(model, list(chosen) + list(rejected), pad_id)
    return r[:len(chosen)], r[len(chosen):]


@torch.inference_mode()
def score_groups(model, fmt: ChatFormat, prompts: list[str], answers: list[list[str]],
                 batch_size: int = 64) -> list[list[float]]:
    """r(x, y) for each answer of each prompt (best-of-n: n answers to one question), in the
    reward model's chat format. A batch holds whole prompts, about ``batch_size`` answers in
    all, sorted by length; each prompt is encoded once for all of its answers. Returned in the
    caller's order, one list per prompt."""
    model.eval()
    p_ids = [fmt.prompt_ids(p) for p in prompts]
    a_ids = [[fmt.answer_ids(a) for a in per] for per in answers]
    order = sorted(range(len(prompts)),
                   key=lambda i: len(p_ids[i]) + max((len(a) for a in a_ids[i]), default=0))
    out: list[list[float]] = [[] for _ in prompts]
    batches: list[list[int]] = [[]]
    held = 0  # answers in the last batch
    for i in (i for i in order if a_ids[i]):
        if batches[-1] and held + len(a_ids[i]) > batch_size:
            batches.append([])
            held = 0
        batches[-1].append(i)
        held += len(a_ids[i])
    for batch in (b for b in batches if b):
        r = rewards_shared(model, [p_ids[i] for i in batch], [a_ids[i] for i in batch],
                           fmt.tok.pad_token_id).tolist()
        for i in batch:
            out[i], r = r[:len(a_ids[i])], r[len(a_ids[i]):]
    return out


@torch.inference_mode()
def score_texts(model, fmt: ChatFormat, prompts: list[str], answers: list[str],
                batch_size: int = 16) -> list[float]:
    """r(x, y) for each (prompt, answer) text pair, in the reward model's chat format; sorted by
    length into batches, returned in the caller's order."""
    model.eval()
    seqs = [fmt.prompt_ids(p) + fmt.answer_ids(a) for p, a in zip(prompts, answers)]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    scores = [0.0] * len(seqs)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        for i, r in zip(idx, rewards(model, [seqs[i] for i in idx], fmt.tok.pad_token_id).tolist()):
            scores[i] = r
    return scores


def trained_base(path: str | Path, cfg: RunConfig) -> str:
    """The base model a saved reward model belongs on: ``model.name`` of the run that wrote
    ``path`` (``start.writing_run``), printed when it is not this run's; this run's own for a
    copied folder. A reward model scores text, so it may sit on another base than the policy."""
    from . import dist
    from .start import setting, writing_run

    found = writing_run(Path(path))
    if found is None:
        return cfg.model.name
    name = setting(found[1], "model.name")
    if name != cfg.model.name and dist.is_main():
        print(f"[spinlora] note: the reward model {path} was trained on {name} by the run "
              f"{found[0]} (this run's model: {cfg.model.name}); it is loaded on its own base")
    return name


def load_trained(path: str | Path, cfg: RunConfig):
    """A saved reward model (``reward/adapter``) for scoring: (model, tokenizer), eval mode,
    on the base it was trained on (``trained_base``)."""
    from peft import PeftModel

    from . import dist

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(
            f"{path} is not a saved reward model (no adapter_config.json): give the "
            "reward/adapter folder of a `spinlora reward` run")
    name = trained_base(path, cfg)
    try:
        base = resolve_model_path(name)
    except ModelNotFoundError:
        if name == cfg.model.name:
            raise
        # e.g. a relative path that its run resolved from another folder
        if dist.is_main():
            print(f"[spinlora] note: {name} is not found from here; the reward model is loaded "
                  f"on this run's model, {cfg.model.name}")
        name = cfg.model.name
        base = resolve_model_path(name)
    tok = load_tokenizer(str(path))
    device = pick_device(cfg.model.device)
    model = _seq_cls(base, dtype=_dtype(cfg, device))
    model.config.pad_token_id = tok.pad_token_id
    try:
        model = PeftModel.from_pretrained(model, str(path))
    except (RuntimeError, ValueError, KeyError) as e:
        raise AdapterError(
            f"the reward model {path} does not fit the base model {name} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}): it was trained on another "
            "base (a folder copied out of its run keeps no record of which). Set model.name to "
            "that base, or train a reward model on this one (`spinlora reward`)") from None
    return model.to(device).eval(), tok


def trained_format(path: str | Path, cfg: RunConfig):
    """The ``data`` settings a saved reward model was trained with, as far as they shape the
    chat it scores: this run's ``cfg.data`` with ``data.CHAT_KEYS`` taken from the config.yaml of
    the run that wrote ``path`` (a key that run's file lacks was run at its default). Without
    such a run (a copied folder), this run's own settings, as before. Differences are printed:
    the reward model then scores in its own format, not this run's."""
    import dataclasses

    from . import dist
    from .start import trained_chat

    found = trained_chat(Path(path))
    if found is None:
        return cfg.data
    run, own = found
    differs = {k: v for k, v in own.items() if v != getattr(cfg.data, k)}
    if differs and dist.is_main():
        print(f"[spinlora] note: the reward model {path} was trained by the run {run} with "
              + "; ".join(f"data.{k} {v!r} (here {getattr(cfg.data, k)!r})"
                          for k, v in differs.items())
              + ": it scores every answer in the chat it was trained on")
    return dataclasses.replace(cfg.data, **own)


def load_reranker(path: str | Path, cfg: RunConfig) -> tuple:
    """(reward model, its ChatFormat): what best-of-n, keep_best and early stopping score with.
    The format is the one the reward model was trained in (``trained_format``), whatever this
    run's own ``data.system_prompt``, ``data.reread`` or ``data.question_first``."""
    model, tok = load_trained(path, cfg)
    return model, ChatFormat.from_config(tok, trained_format(path, cfg))

