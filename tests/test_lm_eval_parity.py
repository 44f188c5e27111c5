"""Parity with lm-evaluation-harness 0.4.13 (a test dependency): lm-eval's own task definitions
and spinlora score the same 50 items per task on the tiny model and agree exactly.

lm-eval runs offline here: each task is its registered YAML with the dataset pointed at a local
jsonl in the Hub's schema, built from ../shared/data. spinlora reads the same documents through
its Hub loader (``datasets.load_dataset`` patched to return them), and its local-file loader is
checked to give the same items. GSM8K is compared on fixed generations (8 x 1319 real outputs
of the 0.5B study) through lm-eval's filters and exact_match, on its k-shot prompts (one draw
per question) and on greedy generation with its stop strings.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch

from conftest import ROOT, SHARED

N = 50
TOL = 2e-3  # summed log-likelihoods (~-100 .. -1000) from two batching schemes, float32


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    # max_length: lm-eval would cut MMLU's 5-shot contexts to the config's 1024 positions; the
    # tiny model's rotary embeddings take any length, and spinlora never truncates
    return model, tok, HFLM(pretrained=model, tokenizer=tok, batch_size=16, max_length=8192,
                            device="cpu")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _lm_eval(hflm, task: str, splits: dict[str, list[dict]], tmp: Path, **kw) -> dict:
    """lm-eval's registered task ``task`` on local documents (one list per split name)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    files = {}
    for split, docs in splits.items():
        files[split] = str(tmp / f"{task}_{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(d) + "\n" for d in docs))
    tm = TaskManager()
    spec = load_yaml(tm._entry(task).yaml_path, resolve_func=True)  # the task as registered
    spec.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": files})
    for key in ("training_split", "validation_split", "test_split", "fewshot_split"):
        if spec.get(key) not in splits:
            spec[key] = None
    out = simple_evaluate(model=hflm, tasks=[spec], task_manager=tm, limit=N, log_samples=True,
                          **kw)
    per_doc = {s["doc_id"]: s for s in out["samples"][task]}  # one entry per filter: keep one
    return {"metrics": out["results"][task], "samples": [per_doc[k] for k in sorted(per_doc)]}


def _spinlora(monkeypatch, task: str, splits: dict[str, list[dict]], model, tok,
              shots: int | None = None) -> tuple[list, dict, list]:
    """spinlora's Hub loader on the same documents: its items, its scores, and each choice's
    log-likelihood."""
    import datasets

    from spinlora.evaluate import choice
    from spinlora.evaluate.tasks import load_task

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, split, **k: splits[split])
    items = load_task(task, None, shots)[:N]
    seen = []  # the per-choice scores the task's own scoring pass computed (one pass, not two)
    real = choice.score_questions
    monkeypatch.setattr(choice, "score_questions",
                        lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    scores = choice.evaluate_choice_task(model, tok, task, items)
    assert len(seen) == 1 and len(seen[0]) == len(items)
    lls = [[c.logprob for c in q] for q in seen[0]]
    return items, scores, lls


def _agree(lm: dict, ours: dict, lls: list, items: list, metrics=("acc", "acc_norm"),
           gold=lambda sample: int(sample["target"])) -> None:
    for k, (sample, item) in enumerate(zip(lm["samples"], items)):
        assert [a for a in sample["arguments"]] == list(zip(item.contexts, item.continuations)), k
        assert [r[0][0] for r in sample["resps"]] == pytest.approx(lls[k], abs=TOL), k
        assert gold(sample) == item.gold, k
    for m in metrics:
        assert ours[m] == lm["metrics"][f"{m},none"], m
    assert ours["n"] == len(lm["samples"]) == N


def _same_items(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.contexts, x.continuations, x.gold) == (y.contexts, y.continuations, y.gold)


def test_arc_challenge(tiny, tmp_path, monkeypatch):
    from spinlora.evaluate.tasks import load_task

    model, tok, hflm = tiny
    docs = []
    for r in _jsonl(SHARED / "arc" / "arc_challenge_test.llmfoundry.jsonl")[:N]:
        labels = list("ABCDE"[:len(r["choices"])])
        docs.append({"id": str(len(docs)), "question": r["query"].removeprefix("Question: "),
                     "choices": {"text": r["choices"], "label": labels},
                     "answerKey": labels[r["gold"]]})
    lm = _lm_eval(hflm, "arc_challenge", {"test": docs}, tmp_path)
    items, ours, lls = _spinlora(monkeypatch, "arc_challenge", {"test": docs}, model, tok)
    _agree(lm, ours, lls, items)
    monkeypatch.undo()
    _same_items(load_task("arc_challenge", SHARED)[:N], items)


def test_winogrande(tiny, tmp_path, monkeypatch):
    from spinlora.evaluate.tasks import load_task

    model, tok, hflm = tiny
    docs = []
    for r in _jsonl(SHARED / "winogrande" / "winogrande_dev.llmfoundry.jsonl")[:N]:
        a, b = r["context_options"]
        cut = len(a[:len(next((p for p in (a[:i] for i in range(len(a), -1, -1))
                                if b.startswith(p)), ""))])
        cut = a.rfind(" ", 0, cut + 1) + 1  # the blank starts a word
        docs.append({"sentence": a[:cut] + "_ " + r["continuation"], "option1": a[cut:],
                     "option2": b[cut:], "answer": str(r["gold"] + 1)})
    lm = _lm_eval(hflm, "winogrande", {"validation": docs}, tmp_path)
    items, ours, lls = _spinlora(monkeypatch, "winogrande", {"validation": docs}, model, tok)
    # WinoGrande's lm-eval target is the text after the blank; its gold is the doc's answer
    _agree(lm, ours, lls, items, metrics=("acc",), gold=lambda s: int(s["doc"]["answer"]) - 1)
    monkeypatch.undo()
    _same_items(load_task("winogrande", SHARED)[:N], items)


# The first 10 rows of rowanz/hellaswag data/hellaswag_val.jsonl (MIT), as the Hub serves them
# (ctx_a and ctx_b apart): the local file joins them, and spinlora must split them back.
HUB_HELLASWAG = [
    ("Roof shingle removal", "A man is sitting on a roof.", "he"),
    ("Clean and jerk", "A lady walks to a barbell. She bends down and grabs the pole.", "the lady"),
    ("Canoeing", "Two women in a child are shown in a canoe while a man pulls the canoe while "
     "standing in the water, with other individuals visible in the background.",
     "the child and a different man"),
    ("High jump", "A boy is running down a track.", "the boy"),
    ("High jump", "The boy lifts his body above the height of a pole. The boy lands on his back "
     "on to a red mat.", "the boy"),
    ("High jump", "The boy lands on his back on to a red mat. The boy gets up from the mat.",
     "the boy"),
    ("Playing harmonica", "A man is standing in front of a camera. He starts playing a harmonica "
     "for the camera.", "he"),
    ("Sumo", "A cartoon animation video is shown with people wandering around and rockets being "
     "shot.", "two men"),
    ("Sharpening knives", "A man is holding a pocket knife while sitting on some rocks in the "
     "wilderness.", "then he"),
    ("Sharpening knives", "Then he takes a small stone from the flowing river and smashes it on "
     "another stone. He starts to crush the small stone to smaller pieces.", "he"),
]


def _hellaswag_local_docs() -> list[dict]:
    import bz2

    from spinlora.evaluate.tasks import hellaswag_local_context

    lines = bz2.open(SHARED / "hellaswag" / "hellaswag_val_full.txt.bz2", "rt").read().split("\n")
    docs = []
    for k in range(0, 6 * N, 6):
        label, _, ctx = hellaswag_local_context(lines[k]).partition(": ")
        cut = ctx.rfind(". ") + 2 if "[" not in ctx else len(ctx)
        docs.append({"activity_label": label, "ctx_a": ctx[:cut].strip(), "ctx_b": ctx[cut:],
                     "endings": lines[k + 2:k + 6], "label": lines[k + 1]})
    return docs


def test_hellaswag_local_file_equals_hub_rows():
    """The split of the joined local context, checked on real Hub rows."""
    from spinlora.evaluate.tasks import _hellaswag_pre, load_task

    local = load_task("hellaswag", SHARED)[:len(HUB_HELLASWAG)]
    for item, (label, a, b) in zip(local, HUB_HELLASWAG):
        assert item.contexts[0] == _hellaswag_pre(f"{label}: {a} {b.capitalize()}")
    assert local[0].contexts[0] == "Roof shingle removal: A man is sitting on a roof. He"


def test_hellaswag(tiny, tmp_path, monkeypatch):
    from spinlora.evaluate.tasks import load_task

    model, tok, hflm = tiny
    docs = _hellaswag_local_docs()
    lm = _lm_eval(hflm, "hellaswag", {"validation": docs}, tmp_path)
    items, ours, lls = _spinlora(monkeypatch, "hellaswag", {"validation": docs}, model, tok)
    _agree(lm, ours, lls, items)
    monkeypatch.undo()
    _same_items(load_task("hellaswag", SHARED)[:N], items)


def test_mmlu_5shot(tiny, tmp_path, monkeypatch, subject="anatomy"):
    import csv

    from spinlora.evaluate.tasks import load_task

    model, tok, hflm = tiny

    def rows(split):
        with open(SHARED / "mmlu" / split / f"{subject}_{split}.csv", newline="") as f:
            return [{"question": r["question"], "subject": subject,
                     "choices": [r[f"choice{j}"] for j in range(4)], "answer": int(r["answer"])}
                    for r in csv.DictReader(f)]

    test, dev = rows("test")[:N], rows("dev")
    lm = _lm_eval(hflm, f"mmlu_{subject}", {"test": test, "dev": dev}, tmp_path, num_fewshot=5)
    items, ours, lls = _spinlora(monkeypatch, "mmlu", {"test": test, "dev": dev}, model, tok, 5)
    _agree(lm, ours, lls, items, metrics=("acc",))
    monkeypatch.undo()
    local = [it for it in load_task("mmlu", SHARED, 5) if it.meta["subject"] == subject][:N]
    _same_items(local, items)


# ---- GSM8K

def _gsm8k_task():
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(TaskManager()._entry("gsm8k").yaml_path, resolve_func=True)


def test_gsm8k_metrics_on_fixed_generations():
    """lm-eval's strict-match / flexible-extract filters and exact_match, run as lm-eval runs
    them, on every output of the study's 8 models plus hand-made edge cases."""
    from lm_eval.api.instance import Instance
    from lm_eval.filters import build_filter_ensemble
    from lm_eval.api.metrics import exact_match_hf_evaluate

    from spinlora.evaluate.gsm8k import lm_eval_filter, lm_eval_match

    cfg = _gsm8k_task()
    gold = {r["question"]: r["answer"] for r in _jsonl(SHARED / "gsm8k" / "test.jsonl")}
    outputs = []
    with tarfile.open(ROOT / "benchmarks/results/spin_quality/eval_samples.tgz") as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.endswith(".jsonl"):
                for line in tar.extractfile(m).read().decode().splitlines():
                    s = json.loads(line)
                    outputs.append((s["output"], gold[s["question"]]))
    assert len(outputs) == 8 * 1319
    edge = ["#### 1,234.", "The answer is $5.00.", "#### -3\n#### 4", "no number", "",
            "It costs 1,000,000 dollars.", "x = .5", "#### 72 apples", "I got 7, then 8.",
            "Answer: 18.\n\nQuestion: 3+4", "#### $1,080", "5" * 400, "-", "1.2.3", "#### 18.0"]
    outputs += [(e, g) for e in edge for g in ("#### 1234", "#### 5", "#### 18", "#### 72")]
    for f in cfg["filter_list"]:
        ensemble = build_filter_ensemble(f["name"], [[x["function"], {
            k: v for k, v in x.items() if k != "function"}] for x in f["filter"]])
        insts = [Instance("generate_until", {"answer": g}, ("", {}), 0, resps=[o])
                 for o, g in outputs]
        ensemble.apply(insts)
        kwargs = {k: v for k, v in cfg["metric_list"][0].items()
                  if k in ("ignore_case", "ignore_punctuation", "regexes_to_ignore")}
        flexible = f["name"] == "flexible-extract"
        mismatches = []
        for inst, (o, g) in zip(insts, outputs):
            pred = inst.filtered_resps[f["name"]]
            theirs = exact_match_hf_evaluate([g], [pred], **kwargs)["exact_match"] == 1.0
            assert lm_eval_filter(o, flexible) == pred, (f["name"], o)
            if lm_eval_match(lm_eval_filter(o, flexible), g) != theirs:
                mismatches.append(o)
        assert not mismatches, (f["name"], mismatches[:3])


def test_gsm8k_fewshot_prompts_and_generation(tiny, tmp_path):
    """5-shot prompts drawn per question as lm-eval draws them, and greedy generation with its
    stop strings: the same prompt tokens and the same answer text, question by question."""
    from spinlora.config import GenerationConfig
    from spinlora.data import ChatFormat
    from spinlora.evaluate.gsm8k import STOP_STRINGS, fewshot_draws, fewshot_prompt_ids
    from spinlora.generate import generate

    model, tok, hflm = tiny
    train = _jsonl(SHARED / "gsm8k" / "train.jsonl")
    test = _jsonl(SHARED / "gsm8k" / "test.jsonl")
    lm = _lm_eval(hflm, "gsm8k", {"train": train, "test": test}, tmp_path,
                  gen_kwargs={"max_gen_toks": 24})
    pool = [{"prompt": r["question"], "answer": r["answer"]} for r in train]
    draws = fewshot_draws(pool, len(test), 5)
    fmt = ChatFormat(tok)
    prompts = [fewshot_prompt_ids(tok, fmt, r["question"], draws[i], "plain")
               for i, r in enumerate(test[:N])]
    for k, sample in enumerate(lm["samples"]):
        assert tok(sample["arguments"][0][0], add_special_tokens=False).input_ids == prompts[k], k
    gens, _ = generate(model, tok, prompts, GenerationConfig(max_new_tokens=24, batch_size=16),
                       ChatFormat(tok).stop_ids, stop_strings=STOP_STRINGS)
    texts = [g.text for g in gens]
    for s in STOP_STRINGS:
        texts = [t.split(s)[0] for t in texts]
    assert texts == [s["resps"][0][0] for s in lm["samples"]]


# ---- the same on the embedded model's BPE tokenizer (slow)

@pytest.fixture(scope="module")
def smol():
    """SmolLM2-135M-Instruct (a byte-level BPE tokenizer, where the context / continuation
    boundary can split a word differently than the character-level tiny tokenizer ever does)."""
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spinlora.models import embedded_model_dir

    path = embedded_model_dir()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    return model, tok, HFLM(pretrained=model, tokenizer=tok, batch_size=16, max_length=8192,
                            device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["arc_challenge", "winogrande", "hellaswag", "mmlu_5shot"])
def test_choice_tasks_on_the_embedded_model(smol, tmp_path, monkeypatch, task):
    {"arc_challenge": test_arc_challenge, "winogrande": test_winogrande,
     "hellaswag": test_hellaswag, "mmlu_5shot": test_mmlu_5shot}[task](smol, tmp_path, monkeypatch)
