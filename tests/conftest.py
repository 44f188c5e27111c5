"""Shared fixtures: a tiny random Llama (2 layers, hidden 64) with a character-level chat
tokenizer, saved as a local model directory, and a small GSM8K-style jsonl. No network."""
from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def load_benchmark(name: str):
    """``benchmarks/NAME.py`` as a module (the folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    chars = sorted(set(string.printable) - set("\x0b\x0c"))
    vocab = {t: i for i, t in enumerate(specials + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.add_special_tokens({"additional_special_tokens": specials[1:]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def write_svamp(root: Path) -> Path:
    """Five SVAMP problems in SVAMP.json's layout ("Tom has a apples. He buys b more."), under
    ``root/svamp``; returns ``root`` (an ``eval.data_root``)."""
    import json

    (root / "svamp").mkdir(parents=True)
    problems = [{"ID": f"chal-{i}", "Body": f"Tom has {a} apples. He buys {b} more.",
                 "Question": "How many apples does he have?", "Equation": f"( {a}.0 + {b}.0 )",
                 "Answer": float(a + b), "Type": "Addition"}
                for i, (a, b) in enumerate(zip(range(1, 6), range(3, 8)))]
    (root / "svamp" / "SVAMP.json").write_text(json.dumps(problems))
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """24 GSM8K-style rows (short, with calculator notes) as train.jsonl + test.jsonl."""
    d = tmp_path_factory.mktemp("tiny-data")
    rows = [{"question": f"Tom has {a} apples and buys {b} more. How many?",
             "answer": f"He has {a}+{b}=<<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b}"}
            for a, b in zip(range(1, 25), range(3, 27))]
    for name, part in (("train", rows[:20]), ("test", rows[20:])):
        with open(d / f"{name}.jsonl", "w") as f:
            for r in part:
                f.write(json.dumps(r) + "\n")
    return d


@pytest.fixture
def tiny_cfg(tiny_model_dir, tiny_data, tmp_path):
    """A full-pipeline config on the tiny model that runs in seconds."""
    from spinlora.config import load_config

    return load_config(None, [
        f"output_dir={tmp_path / 'run'}", f"model.name={tiny_model_dir}", "model.dtype=float32",
        f"data.train={tiny_data / 'train.jsonl'}", f"data.eval={tiny_data / 'test.jsonl'}",
        "data.sft_examples=12", "data.max_length=160", "train.batch_size=4",
        "train.micro_batch_size=4", "train.lr=1e-2", "train.log_every=100",
        "generation.max_new_tokens=12", "generation.batch_size=4", "spin.iterations=2",
        "spin.prompts=6", "spin.heldout=3", "spin.lr=1e-2", "spin.beta=[0.1, 0.5]",
        "eval.limit=3"])
