"""Data loading: errors with file and line, calculator notes, the overlong policy, padding."""
import pytest
import torch

from spinlora.config import DataConfig
from spinlora.data import DataError, collate, load_rows, strip_calculator_notes
from conftest import SHARED


def test_malformed_row_reports_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"question": "a", "answer": "b"}\n{"question": "c", \n')
    with pytest.raises(DataError, match=rf"{f}:2: malformed JSON"):
        load_rows(str(f), DataConfig(), "train")
    f.write_text('{"question": "a", "answer": "b"}\n\n{"question": "c"}\n')
    with pytest.raises(DataError, match=rf"{f}:3: field 'answer' is missing"):
        load_rows(str(f), DataConfig(), "train")


def test_missing_file_says_what_to_do():
    with pytest.raises(DataError, match="not found.*Hub id"):
        load_rows("./nope/train.jsonl", DataConfig(), "train")


def test_strip_calculator_notes():
    assert strip_calculator_notes("48/2 = <<48/2=24>>24 clips\n#### 24") == "48/2 = 24 clips\n#### 24"


def test_local_gsm8k_file_and_dataset_directory_agree():
    rows = load_rows(str(SHARED / "gsm8k" / "test.jsonl"), DataConfig(), "test")
    assert len(rows) == 1319
    # a directory goes through datasets.load_dataset, the same code path as a Hub id
    rows_ds = load_rows(str(SHARED / "gsm8k") + ":test", DataConfig(), "test")
    assert rows_ds == rows


def test_overlong_policy(tiny_model_dir):
    from spinlora.data import ChatFormat, build_examples
    from spinlora.models import load_tokenizer

    fmt = ChatFormat(load_tokenizer(str(tiny_model_dir)))
    rows = [{"prompt": "q", "answer": "x" * 10}, {"prompt": "q", "answer": "y" * 200}]
    ex, counts = build_examples(rows, fmt, DataConfig(max_length=60, overlong="drop"))
    assert len(ex) == 1 and counts["dropped_overlong"] == 1
    ex, counts = build_examples(rows, fmt, DataConfig(max_length=60, overlong="truncate"))
    assert len(ex) == 2 and counts["truncated_overlong"] == 1
    assert len(ex[1].prompt_ids) + len(ex[1].answer_ids) == 60 and ex[1].truncated
    assert ex[0].answer_ids[-1] == fmt.end_id and ex[1].answer_ids[-1] != fmt.end_id


def test_collate_pads_dynamically():
    b = collate([([1, 2], [3]), ([1], [4, 5, 6, 7])], pad_id=0)
    assert b.input_ids.shape == (2, 5)  # longest in batch, not a fixed max length
    assert b.answer_mask.tolist() == [[False, False, True, False, False],
                                      [False, True, True, True, True]]
    assert b.attention_mask.sum().item() == 8


def test_label_answer_names_what_is_asked_and_keeps_the_score(tiny_model_dir):
    from spinlora import svamp
    from spinlora.data import ChatFormat, asked_object, build_examples
    from spinlora.models import load_tokenizer

    assert asked_object("Tom had 5 pieces of gum. How many more pieces of gum did he chew?") \
        == "pieces of gum"
    assert asked_object("He sells 36 boxes. How many cases of 12 boxes does he need?") == "cases"
    assert asked_object("He sells games for $4 each. How much money could he earn?") == "money"
    assert asked_object("Paul got 5 apples. How many did he get?") is None
    assert asked_object("Paul got 5 apples. What is the total?") is None
    path = SHARED / "svamp" / "mawps-asdiv-a_train.csv"
    if not path.is_file():
        pytest.skip("../shared/data/svamp not present")
    rows = svamp.read_train_csv(path)
    fmt = ChatFormat(load_tokenizer(str(tiny_model_dir)))
    plain, _ = build_examples(rows, fmt, DataConfig(max_length=512))
    labelled, _ = build_examples(rows, fmt, DataConfig(max_length=512, label_answer=True))
    changed = [(p, q) for p, q in zip(plain, labelled) if p.answer != q.answer]
    assert 2000 < len(changed) < len(rows)  # most questions ask "how many X" / "how much X"
    for p, q in changed:
        assert q.answer.endswith(": " + p.answer) and q.prompt_ids == p.prompt_ids
    # the labelled gold is still scored right by its equation's value and its stated number
    for r, q in zip(rows, labelled):
        s = svamp.score(q.answer, r["value"])
        assert s["correct"] and s["stated_correct"], q.answer
