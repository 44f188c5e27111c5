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
from .models import load_tokenizer, pick_device, pick_dtype, resolve_model_path


def _dtype(cfg: RunConfig, device: torch.device) -> torch.dtype:
    """The policy's dtype, except that ``auto`` stays fp32 on a CPU: the reward head is trained
    whole (not an adapter), and bf16 weights lose AdamW's small updates."""
    if cfg.model.dtype == "auto" and device.type == "cpu":
        return torch.float32
    return pick_dtype(cfg.model.dtype, device)


def load_reward_model(cfg: RunConfig):
    """(scalar-head model with LoRA on the body, tokenizer)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    if cfg.adapter.method not in ("lora", "dora"):
        raise AdapterError(f"the reward model trains LoRA or DoRA (adapter.method="
                           f"{cfg.adapter.method!r} is not supported here)")
    path = resolve_model_path(cfg.model.name)
    device = pick_device(cfg.model.device)
    tok = load_tokenizer(path, cfg.model.revision)
    torch.manual_seed(cfg.seed)  # the head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=_dtype(cfg, device), revision=cfg.model.revision)
    model.config.pad_token_id = tok.pad_token_id
    a = cfg.adapter
    model = get_peft_model(model, LoraConfig(
        r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, target_modules=list(a.target_modules),
        task_type="SEQ_CLS", use_dora=a.method == "dora"))
    return model.to(device), tok


def rewards(model, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """r(x, y) per sequence: the scalar head on the last real token's hidden state."""
    clf = model.get_base_model()
    body = getattr(clf, clf.base_model_prefix)
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


def load_trained(path: str | Path, cfg: RunConfig):
    """A saved reward model (``reward/adapter``) for scoring: (model, tokenizer), eval mode."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    path = Path(path)
    base = resolve_model_path(cfg.model.name)
    tok = load_tokenizer(str(path))
    device = pick_device(cfg.model.device)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=1, dtype=_dtype(cfg, device))
    model.config.pad_token_id = tok.pad_token_id
    model = PeftModel.from_pretrained(model, str(path)).to(device).eval()
    return model, tok


def load_reranker(path: str | Path, cfg: RunConfig) -> tuple:
    """(reward model, its ChatFormat): what best-of-n, keep_best and early stopping score with."""
    model, tok = load_trained(path, cfg)
    return model, ChatFormat(tok, cfg.data.system_prompt)

