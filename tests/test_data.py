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
