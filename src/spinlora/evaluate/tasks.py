"""Multiple-choice benchmarks: loaders (local files in ../shared/data or the Hub) and prompts in
the format of lm-evaluation-harness's standard tasks, so scores compare in the same shot setting.

Each task turns a row into an ``Item``: one context per choice (the same context, except for
WinoGrande's partial scoring), one continuation per choice, the gold index.

- mmlu (hendrycks_test): "The following are multiple choice questions (with answers) about
  {subject}." + k dev shots; choices " A" … " D"; macro (per subject) and micro averages.
- arc_challenge / arc_easy: "Question: {q}\\nAnswer:" + " {choice}"; acc and acc_norm.
- hellaswag: "{activity}: {ctx_a} {ctx_b.capitalize()}" + " {ending}" after lm-eval's
  preprocessing (the local file's joined ctx is split back: ``hellaswag_local_context``).
- winogrande: partial scoring: context = sentence up to the blank with the option filled in,
  continuation = the rest of the sentence; the option whose context predicts it best wins.
"""
from __future__ import annotations

import bz2
import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..data import DataError, read_rows

LETTERS = ["A", "B", "C", "D"]


@dataclass
class Item:
    contexts: list[str]
    continuations: list[str]
    gold: int
    meta: dict = field(default_factory=dict)


def _jsonl(path: Path) -> list[dict]:
    return [row for _, row in read_rows(path)]


def _need(row: dict, keys: tuple, where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")


# ---- loaders: each returns a list of Items; `root` is a local data folder or None for the Hub

def load_arc(root: Path | None, subset: str = "challenge") -> list[Item]:
    if root is None:
        import datasets

        ds = datasets.load_dataset("allenai/ai2_arc", f"ARC-{subset.capitalize()}", split="test")
        return [Item([f"Question: {r['question']}\nAnswer:"] * len(r["choices"]["text"]),
                     [f" {c}" for c in r["choices"]["text"]],
                     r["choices"]["label"].index(r["answerKey"])) for r in ds]
    path = root / "arc" / f"arc_{subset}_test.llmfoundry.jsonl"
    items = []
    for i, r in enumerate(_jsonl(path), 1):
        _need(r, ("query", "choices", "gold"), f"{path}:{i}")
        q = r["query"] if r["query"].rstrip().endswith("Answer:") else r["query"] + "\nAnswer:"
        items.append(Item([q] * len(r["choices"]), [f" {c}" for c in r["choices"]], int(r["gold"])))
    return items


def _hellaswag_pre(text: str) -> str:
    # lm-evaluation-harness hellaswag/utils.py preprocess
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_local_context(line: str) -> str:
    """The Hub path's raw context, rebuilt from a line of the local file.

    lm-eval writes ``activity_label + ": " + ctx_a + " " + ctx_b.capitalize()``. The local file
    (klosax/hellaswag_text_data) holds ``activity_label + ": " + ctx``, and rowanz/hellaswag's
    README defines ``ctx = ctx_a + " " + ctx_b`` where ctx_b is the incomplete noun phrase that
    ends an ActivityNet context ("... on a roof. he"): the text after the last ". ". WikiHow
    contexts (with ``[title]``-style markers) have an empty ctx_b and stay as they are.
    """
    label, _, ctx = line.partition(": ")
    cut = ctx.rfind(". ")
    if "[" in ctx or cut < 0:
        return line
    return f"{label}: {ctx[:cut + 2]}{ctx[cut + 2:].capitalize()}"


def load_hellaswag(root: Path | None) -> list[Item]:
    if root is None:
        import datasets

        ds = datasets.load_dataset("Rowan/hellaswag", split="validation")
        return [Item([_hellaswag_pre(f"{r['activity_label']}: {r['ctx_a']} "
                                     f"{r['ctx_b'].capitalize()}")] * 4,
                     [" " + _hellaswag_pre(e) for e in r["endings"]], int(r["label"])) for r in ds]
    path = root / "hellaswag" / "hellaswag_val_full.txt.bz2"
    with bz2.open(path, "rt") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise DataError(f"{path}: {len(lines)} lines is not a multiple of 6 "
                        "(context, label, 4 endings per item)")
    items = []
    for k in range(0, len(lines), 6):
        try:
            gold = int(lines[k + 1])
        except ValueError:
            raise DataError(f"{path}:{k + 2}: label {lines[k + 1]!r} is not an integer") from None
        ctx = _hellaswag_pre(hellaswag_local_context(lines[k]))
        items.append(Item([ctx] * 4, [" " + _hellaswag_pre(e) for e in lines[k + 2:k + 6]], gold))
    return items


def load_winogrande(root: Path | None) -> list[Item]:
    if root is None:
        import datasets

        ds = datasets.load_dataset("allenai/winogrande", "winogrande_xl", split="validation")
        items = []
        for r in ds:
            idx = r["sentence"].index("_")
            cont = " " + r["sentence"][idx + 1:].strip()
            items.append(Item([r["sentence"][:idx] + o for o in (r["option1"], r["option2"])],
                              [cont, cont], int(r["answer"]) - 1))
        return items
    path = root / "winogrande" / "winogrande_dev.llmfoundry.jsonl"
    items = []
    for i, r in enumerate(_jsonl(path), 1):
        _need(r, ("context_options", "continuation", "gold"), f"{path}:{i}")
        cont = " " + r["continuation"].strip()
        items.append(Item(list(r["context_options"]), [cont] * len(r["context_options"]),
                          int(r["gold"])))
    return items


def _mmlu_rows(path: Path) -> list[dict]:
    rows = []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        for i, r in enumerate(reader, 2):
            try:
                rows.append({"question": r["question"],
                             "choices": [r[f"choice{j}"] for j in range(4)],
                             "answer": int(r["answer"])})
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{path}:{i}: expected columns question,choice0..choice3,answer "
                                "with answer 0-3") from None
    return rows


def _mmlu_block(q: str, choices: list[str]) -> str:
    return q.strip() + "".join(f"\n{LETTERS[j]}. {c}" for j, c in enumerate(choices)) + "\nAnswer:"


def load_mmlu(root: Path | None, shots: int = 5) -> list[Item]:
    if root is None:
        import datasets

        test = datasets.load_dataset("cais/mmlu", "all", split="test")
        dev = datasets.load_dataset("cais/mmlu", "all", split="dev")
        by_subject: dict[str, tuple[list, list]] = {}
        for r in dev:
            by_subject.setdefault(r["subject"], ([], []))[0].append(r)
        for r in test:
            by_subject.setdefault(r["subject"], ([], []))[1].append(r)
    else:
        by_subject = {}
        for p in sorted((root / "mmlu" / "test").glob("*_test.csv")):
            subject = p.name[:-len("_test.csv")]
            dev = root / "mmlu" / "dev" / f"{subject}_dev.csv"
            by_subject[subject] = (_mmlu_rows(dev) if dev.exists() else [], _mmlu_rows(p))
    items = []
    for subject, (dev_rows, test_rows) in sorted(by_subject.items()):
        head = ("The following are multiple choice questions (with answers) about "
                f"{subject.replace('_', ' ')}.\n\n")
        fewshot = "".join(_mmlu_block(r["question"], r["choices"]) + f" {LETTERS[r['answer']]}\n\n"
                          for r in dev_rows[:shots])
        for r in test_rows:
            ctx = head + fewshot + _mmlu_block(r["question"], r["choices"])
            items.append(Item([ctx] * 4, [f" {x}" for x in LETTERS], int(r["answer"]),
                              {"subject": subject}))
    return items


TASKS = {
    "arc_challenge": lambda root, shots: load_arc(root, "challenge"),
    "arc_easy": lambda root, shots: load_arc(root, "easy"),
    "hellaswag": lambda root, shots: load_hellaswag(root),
    "winogrande": lambda root, shots: load_winogrande(root),
    "mmlu": lambda root, shots: load_mmlu(root, shots),
}
DEFAULT_SHOTS = {"arc_challenge": 0, "arc_easy": 0, "hellaswag": 0, "winogrande": 0, "mmlu": 5}


def load_task(name: str, root: str | Path | None, shots: int | None = None) -> list[Item]:
    """Items of a task from a local data folder (``../shared/data``) or, with root None, the Hub."""
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; available: {sorted(TASKS)} and gsm8k")
    r = Path(root) if root is not None else None
    if r is not None and not r.is_dir():
        raise DataError(f"data folder {r} not found; pass eval.data_root or use the Hub (null)")
    return TASKS[name](r, DEFAULT_SHOTS[name] if shots is None else shots)
