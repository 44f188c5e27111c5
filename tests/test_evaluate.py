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
