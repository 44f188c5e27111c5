"""GSM8K answer extraction on hand-written strings."""
import pytest

from spinlora.evaluate import extract_answer


@pytest.mark.parametrize("text,want", [
    ("She pays 5*3=15 dollars.\n#### 15", "15"),
    ("#### 1,234", "1234"),
    ("The answer is $1,234.", "1234"),
    ("First 3 apples, then 4 more, so 7.", "7"),
    ("#### -5", "-5"),
    ("It costs $12.50 in total.", "12.5"),
    ("We get 18.00", "18"),
    ("#### 42\nThen something 99", "42"),   # '#### N' wins over the last number
    ("no number here", None),
    ("", None),
])
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_strict_and_flexible_extraction():
    from spinlora.evaluate.gsm8k import extract_flexible, extract_strict

    assert extract_strict("so 7 apples") is None and extract_flexible("so 7 apples") == "7"
    assert extract_strict("#### 1,000") == "1000" == extract_flexible("#### 1,000")


def test_fewshot_prompts(tiny_model_dir):
    from spinlora.data import ChatFormat
    from spinlora.evaluate.gsm8k import fewshot_prompt_ids
    from spinlora.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    shots = [{"prompt": "1+1?", "answer": "2\n#### 2"}, {"prompt": "2+2?", "answer": "4\n#### 4"}]
    plain = tok.decode(fewshot_prompt_ids(tok, ChatFormat(tok), "3+3?", shots, "plain"))
    assert plain == "Question: 1+1?\nAnswer: 2\n#### 2\n\nQuestion: 2+2?\nAnswer: 4\n#### 4\n\nQuestion: 3+3?\nAnswer:"
    chat = tok.decode(fewshot_prompt_ids(tok, ChatFormat(tok), "3+3?", shots, "chat"))
    assert chat.count("<|im_start|>user") == 3 and chat.count("<|im_start|>assistant") == 3
    assert chat.endswith("3+3?<|im_end|>\n<|im_start|>assistant\n")
