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


def test_fewshot_draws_follow_the_question_not_the_subset(tiny_cfg):
    """Each question gets the exemplars of its place in the test file (lm-eval's draw for it),
    whatever subset is evaluated; ``fixed`` gives every question one shared set."""
    from spinlora.data import ChatFormat, load_rows
    from spinlora.evaluate.gsm8k import fewshot_draws
    from spinlora.models import load_tokenizer
    from spinlora.pipeline import eval_inputs

    tok = load_tokenizer(tiny_cfg.model.name)
    tiny_cfg.eval.gsm8k_shots = 2
    pool = load_rows(tiny_cfg.data.train, tiny_cfg.data, "train")
    full = fewshot_draws(pool, 4, 2)
    assert len({str(d) for d in full}) == 4 and all(len(d) == 2 for d in full)
    tiny_cfg.eval.limit = 2
    examples, shots, _ = eval_inputs(tiny_cfg, ChatFormat(tok))
    assert [e.meta["index"] for e in examples] != [0, 1]  # a subset that is not the first rows
    assert shots == [full[e.meta["index"]] for e in examples]
    tiny_cfg.eval.gsm8k_fewshot = "fixed"
    _, fixed, _ = eval_inputs(tiny_cfg, ChatFormat(tok))
    assert fixed[0] == fixed[1] and len(fixed[0]) == 2


def test_extraction_survives_any_string():
    """Random text, huge numbers, unicode digits and symbols: extraction never raises and
    returns a string or None; huge numbers compare exactly (no float overflow)."""
    import random

    from spinlora.evaluate.gsm8k import extract_flexible, extract_strict, normalize_number

    rng = random.Random(0)
    alphabet = "0123456789,.$-#### \n\tabcXYZ٣٤५€½²∞e+()" + "\u0000\uffff"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        for f in (extract_answer, extract_strict, extract_flexible):
            out = f(text)
            assert out is None or isinstance(out, str)
    huge = "9" * 5000
    assert extract_answer(f"so the total is {huge}.") == huge
    assert extract_answer(f"#### 1{'0' * 400}") != extract_answer(f"#### 1{'0' * 399}1")
    assert normalize_number("1" + "0" * 400 + ".000") == "1" + "0" * 400
    assert normalize_number("-0.0") == "0" and normalize_number("007.50") == "7.5"
    assert normalize_number(".5") == "0.5"


@pytest.mark.parametrize("output,strict,flexible", [
    ("so 3 + 4 = 7\n#### 7", True, True),
    ("The answer is $7.", False, True),          # "$7." -> "7" after regexes_to_ignore
    ("#### 7.00", False, False),                 # string match: 7.00 != 7 (lm-eval, not numbers)
    ("#### 7 and then 8", True, False),          # strict takes the first, flexible the last
    ("#### 1,007", False, False),                # gold 7: "1007" != "7"
    ("seven", False, False),                     # "[invalid]"
    ("answer: 7", False, True),                  # a single digit via the second group
])
def test_lm_eval_gsm8k_metrics_exactly(output, strict, flexible):
    from spinlora.evaluate.gsm8k import lm_eval_filter, lm_eval_match

    gold = "She has 3+4=<<3+4=7>>7 apples.\n#### 7"
    assert lm_eval_match(lm_eval_filter(output, False), gold) is strict
    assert lm_eval_match(lm_eval_filter(output, True), gold) is flexible
    assert lm_eval_filter("no digits", True) == "[invalid]"


def test_plain_fewshot_prompt_has_no_bos_like_lm_eval(tiny_model_dir):
    from spinlora.data import ChatFormat
    from spinlora.evaluate.gsm8k import fewshot_prompt_ids
    from spinlora.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    tok.add_bos_token = True  # a tokenizer that would add one by default
    ids = fewshot_prompt_ids(tok, ChatFormat(tok), "3+3?", [{"prompt": "1+1?", "answer": "2"}],
                             "plain")
    assert ids[0] != tok.bos_token_id and tok.decode(ids).startswith("Question: 1+1?")
