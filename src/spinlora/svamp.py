"""SVAMP (Patel et al. 2021, NAACL, "Are NLP Models really able to Solve Simple Math Word
Problems?"): its training data (MAWPS + ASDiv-A) and its 1000 test problems as chat rows, and the
paper's score, the value of the equation the model writes.

Rows. A training row of ``mawps-asdiv-a_train.csv`` has placeholders (``number0`` …) in its text,
their values in ``Numbers`` and a prefix equation (``* number0 number1``); a test row of
``SVAMP.json`` (or the Hub copy ``ChilleD/SVAMP``, whose train + test splits are the same 1000
problems) has ``Body``, ``Question``, an infix ``Equation`` over the real numbers and ``Answer``.
Both become ``{prompt, answer, value}``: the prompt is the problem text, the gold answer is the
equation written out over the real numbers, then the final answer in the GSM8K convention::

    56 * 9 = 504
    #### 504

so SPIN's and RL's answer checks (``#### N``) apply unchanged. Numbers print as integers where
they are integers, else with at most 4 decimals. The final answer is the **equation's value**: 18
training rows state an ``Answer`` that differs from it (rounding in the source); they are kept
with the equation's value and counted (``answer_mismatch`` in ``LOAD_STATS``).

Scoring. ``equation_value(text)`` finds the last equation ``expr = …`` the model wrote and
computes ``expr`` with a safe evaluator (numbers, + - * /, parentheses; nothing else is
evaluated), as the SVAMP paper's models write an equation and a solver computes it. An answer
with no equation is scored by the number it states. ``stated_value`` is the number after
``####`` (else the last number), reported beside it.
"""
from __future__ import annotations

import ast
import csv
import math
import operator
import re
from fractions import Fraction
from pathlib import Path

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}
_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
LOAD_STATS: dict = {}  # counts of the last load: rows, answer_mismatch (see module docstring)


class SvampError(ValueError):
    """A SVAMP row that cannot be read (the caller names file and line)."""


def fmt_number(x: float | Fraction) -> str:
    """``56.0`` -> ``"56"``, ``0.8333333`` -> ``"0.8333"``, ``-2.50`` -> ``"-2.5"``."""
    x = float(x)
    if abs(x - round(x)) < 1e-9:
        return str(int(round(x)))
    return f"{x:.4f}".rstrip("0").rstrip(".")


# An expression tree is a number (Fraction, exact) or (op, left, right).
def _value(tree) -> Fraction:
    if isinstance(tree, Fraction):
        return tree
    op, a, b = tree
    left, right = _value(a), _value(b)
    if op == "/" and right == 0:
        raise ZeroDivisionError("division by zero in the equation")
    return OPS[op](left, right)


def _render(tree, parent: str | None = None, right_side: bool = False) -> str:
    """Infix text with only the parentheses the precedence needs."""
    if isinstance(tree, Fraction):
        return fmt_number(tree)
    op, a, b = tree
    text = f"{_render(a, op)} {op} {_render(b, op, True)}"
    if parent and (PRECEDENCE[op] < PRECEDENCE[parent]
                   or (right_side and PRECEDENCE[op] == PRECEDENCE[parent] and parent in "-/")):
        return f"({text})"
    return text


def _from_prefix(tokens: list[str], numbers: list[Fraction]):
    def take(i: int):
        if i >= len(tokens):
            raise SvampError("prefix equation ends early")
        t = tokens[i]
        if t in OPS:
            left, i = take(i + 1)
            right, i = take(i)
            return (t, left, right), i
        if t.startswith("number"):
            k = int(t[len("number"):])
            if k >= len(numbers):
                raise SvampError(f"{t} but only {len(numbers)} numbers")
            return numbers[k], i + 1
        return Fraction(t), i + 1  # a constant such as 100.0 or 0.01

    tree, end = take(0)
    if end != len(tokens):
        raise SvampError("prefix equation has tokens left over")
    return tree


def _from_ast(node):
    if isinstance(node, ast.Expression):
        return _from_ast(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        return Fraction(str(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
        return (_AST_OPS[type(node.op)], _from_ast(node.left), _from_ast(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _value(_from_ast(node.operand))
        return -v if isinstance(node.op, ast.USub) else v
    raise SvampError(f"not an arithmetic expression: {ast.dump(node)[:60]}")


def parse_infix(text: str):
    """An expression tree from infix text; SvampError for anything but numbers, + - * / and
    parentheses (names, calls, powers are refused: nothing is executed)."""
    if len(text) > 200:
        raise SvampError("expression too long")
    try:
        return _from_ast(ast.parse(text.strip(), mode="eval"))
    except SyntaxError:
        raise SvampError(f"cannot parse {text!r}") from None


def _answer(tree) -> tuple[str, float]:
    value = _value(tree)
    shown = fmt_number(value)
    return f"{_render(tree)} = {shown}\n#### {shown}", float(value)


def _detok(text: str) -> str:
    """Undo the training file's tokenisation ("books , how many ?" -> "books, how many?")."""
    text = re.sub(r" ([.,?!;:])", r"\1", text)
    text = re.sub(r" (n't|'s|'re|'ll|'ve|'m|'d)\b", r"\1", text)
    text = re.sub(r"\$ (\d)", r"$\1", text)
    return re.sub(r"\s+", " ", text).strip()


def train_row(row: dict) -> dict:
    """A MAWPS / ASDiv-A row (``mawps-asdiv-a_train.csv``) as ``{prompt, answer, value}``."""
    try:
        numbers = [Fraction(x) for x in row["Numbers"].split()]
    except (ValueError, AttributeError):
        raise SvampError(f"Numbers {row.get('Numbers')!r} is not a list of numbers") from None
    tree = _from_prefix(row["Equation"].split(), numbers)
    text = re.sub(r"number(\d+)", lambda m: fmt_number(numbers[int(m.group(1))])
                  if int(m.group(1)) < len(numbers) else m.group(0), row["Question"])
    answer, value = _answer(tree)
    stated = float(row["Answer"]) if row.get("Answer") not in (None, "") else value
    return {"prompt": _detok(text), "answer": answer, "value": value,
            "answer_mismatch": not math.isclose(stated, value, rel_tol=1e-6, abs_tol=1e-6)}


def test_row(row: dict) -> dict:
    """A SVAMP problem (``SVAMP.json`` / ``ChilleD/SVAMP``) as ``{prompt, answer, value}``."""
    tree = parse_infix(str(row["Equation"]))
    answer, value = _answer(tree)
    prompt = f"{str(row['Body']).strip()} {str(row['Question']).strip()}"
    return {"prompt": prompt, "answer": answer, "value": value, "id": row.get("ID"),
            "type": row.get("Type"),
            "answer_mismatch": not math.isclose(float(row["Answer"]), value, rel_tol=1e-6,
                                                abs_tol=1e-6)}


SVAMP_FIELDS = ("Body", "Question", "Equation", "Answer")
TRAIN_FIELDS = ("Question", "Numbers", "Equation")


def is_svamp_row(row) -> bool:
    return isinstance(row, dict) and all(k in row for k in SVAMP_FIELDS)


def convert(items: list[tuple[str, dict]], kind: str) -> list[dict]:
    """Rows (each with where it stands, for errors) -> chat rows; records ``LOAD_STATS``."""
    out = []
    for where, row in items:
        try:
            out.append(train_row(row) if kind == "train" else test_row(row))
        except (SvampError, ZeroDivisionError, KeyError, ValueError, TypeError) as e:
            raise SvampError(f"{where}: cannot read this SVAMP row ({type(e).__name__}: {e}); "
                             f"a row needs {TRAIN_FIELDS if kind == 'train' else SVAMP_FIELDS}"
                             ) from None
    LOAD_STATS.clear()
    LOAD_STATS.update(rows=len(out), answer_mismatch=sum(r["answer_mismatch"] for r in out))
    return out


def read_train_csv(path: Path) -> list[dict]:
    """``mawps-asdiv-a_train.csv`` (or any csv with its columns) as chat rows."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [k for k in TRAIN_FIELDS if k not in (reader.fieldnames or [])]
        if missing:
            raise SvampError(f"{path}: a csv needs the SVAMP training columns {TRAIN_FIELDS} "
                             f"(missing {missing}); other data goes in a jsonl file")
        return convert([(f"{path}:{i}", r) for i, r in enumerate(reader, 2)], "train")


def load_test(root: str | Path | None) -> list[dict]:
    """The 1000 SVAMP problems: ``root/svamp/SVAMP.json``, or with root None the Hub copy
    ``ChilleD/SVAMP`` (its train and test splits together are the 1000 problems)."""
    if root is None:
        import datasets

        rows = [r for split in ("train", "test")
                for r in datasets.load_dataset("ChilleD/SVAMP", split=split)]
        rows.sort(key=lambda r: int(str(r["ID"]).split("-")[-1]))
        return convert([(f"ChilleD/SVAMP {r['ID']}", r) for r in rows], "test")
    import json

    path = Path(root) / "svamp" / "SVAMP.json"
    if not path.is_file():
        raise SvampError(f"{path} not found; set eval.data_root to the folder holding svamp/ "
                         "(../shared/data) or to null to load ChilleD/SVAMP from the Hub")
    data = json.loads(path.read_text())
    return convert([(f"{path} row {i + 1}", r) for i, r in enumerate(data)], "test")


# ---- scoring the model's text

_EXPR_CHARS = re.compile(r"[\d\s.+\-*/×÷()x]+$")


def _clean(expr: str) -> str:
    expr = expr.replace("×", "*").replace("÷", "/").replace(",", "").replace("$", "")
    return re.sub(r"(?<=[\d)\s])x(?=[\s\d(])", "*", expr)


def _tail_expression(segment: str) -> str | None:
    """The arithmetic expression that ends ``segment`` ("so she has 5 + 3" -> "5 + 3")."""
    seg = _clean(segment).rstrip()
    m = re.search(r"[\d\s.+\-*/()]+$", seg)
    if not m:
        return None
    expr = m.group(0).strip()
    while expr.count("(") > expr.count(")") and expr.startswith("("):  # "(a+b" left of "="
        expr = expr[1:].strip()
    while expr.count(")") > expr.count("(") and expr.endswith(")"):
        expr = expr[:-1].strip()
    return expr if re.search(r"\d", expr) else None


# an operator between operands: "5 + 3", "2*(", ") /"
_HAS_OP = re.compile(r"\d\s*[-+*/]\s*[\d(]|\)\s*[-+*/]")


def last_equation(text: str) -> tuple[str, float] | None:
    """The last equation ``expr = …`` in ``text`` (before ``####``) whose left side holds at
    least one operator and evaluates: ``(expr, its value)``; None when there is none. Only
    numbers, + - * / and parentheses are evaluated (``parse_infix``)."""
    body = text.split("####")[0]
    found = None
    for line in body.splitlines():
        parts = line.split("=")
        for left in parts[:-1]:
            expr = _tail_expression(left)
            if not expr or not _HAS_OP.search(expr):
                continue
            try:
                found = (expr, float(_value(parse_infix(expr))))
            except (SvampError, ZeroDivisionError, ValueError, OverflowError, RecursionError):
                continue
    return found


def equation_value(text: str) -> float | None:
    """The value of ``last_equation(text)``: the SVAMP paper's score of an answer."""
    eq = last_equation(text)
    return eq[1] if eq else None


def calculate(text: str) -> str | None:
    """``generation.calculator``: the value of the expression that ends ``text`` (an answer so
    far, ending with ``=``), written as the gold answers write numbers; None when the line holds
    no expression with an operator ("x = ", "8 = ") or it cannot be computed (``5 / 0``)."""
    body = text.rstrip()
    if not body.endswith("="):
        return None
    segment = body[:-1].split("\n")[-1].split("=")[-1].split("<<")[-1]
    expr = _tail_expression(segment)
    if not expr or not _HAS_OP.search(expr):
        return None
    try:
        return fmt_number(_value(parse_infix(expr)))
    except (SvampError, ZeroDivisionError, ValueError, OverflowError, RecursionError):
        return None


_STATED = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def stated_value(text: str) -> float | None:
    """The number after ``####``, else the last number in the text."""
    m = _STATED.search(text)
    raw = m.group(1) if m else (NUMBER.findall(text) or [None])[-1]
    if raw is None:
        return None
    try:
        return float(raw.replace(",", ""))
    except ValueError:
        return None


def irrelevant_numbers(question: str, gold_answer: str) -> bool:
    """Whether a problem states more numbers than its gold equation uses (the first line of a
    gold answer as this module writes it, ``56 * 9 = 504``): SVAMP's "irrelevant
    information" variation, which 447 of its 1000 problems carry and 340 of the 3138 training
    rows."""
    return irrelevant_count(question, gold_answer) > 0


def irrelevant_count(question: str, gold_answer: str) -> int:
    """How many more numbers a problem states than its gold equation uses."""
    return len(NUMBER.findall(question)) - len(NUMBER.findall(equation_side(gold_answer)))


def several_irrelevant(question: str, gold_answer: str) -> bool:
    """Whether a problem states two or more numbers its gold equation does not use, mostly a
    second object running beside the asked one through the story ("10 emails and 12 letters …
    3 emails and 44 letters"): 149 of SVAMP's 447 (``data.conjoin_every`` imitates it)."""
    return irrelevant_count(question, gold_answer) >= 2


def equation_side(gold_answer: str) -> str:
    """The expression of a gold answer's equation (``56 * 9`` of ``56 * 9 = 504\n#### 504``)."""
    return gold_answer.split("\n")[0].rsplit("=", 1)[0]


def _substitute(tree, leaf):
    """``tree`` with each number ``x`` replaced by ``leaf(x)`` (a number or a tree)."""
    if isinstance(tree, Fraction):
        return leaf(tree)
    op, a, b = tree
    return (op, _substitute(a, leaf), _substitute(b, leaf))


def swap_numbers(gold_answer: str, numbers: dict[float, float], add: bool = False,
                 added_first: bool = False) -> tuple[str, float] | None:
    """The gold answer (``56 * 9 = 504\n#### 504``) with each number of its equation replaced
    by ``numbers[its value]``, and its value; None where the equation uses a number not in
    ``numbers``, divides by zero, or comes out negative, or fractional where the gold was whole
    (``data.conjoin_ask``: the same story asked about its other object). ``add``
    (``data.conjoin_both``: the story asked about both objects): each number ``x`` found in
    ``numbers`` becomes ``(x + numbers[x])`` and the others stay, accepted only where that is
    the sum of the two objects' answers, f(x + y) = f(x) + f(y), checked with the added numbers
    as given and doubled (``(31 + 27) * 11``, ``(13 + 15) / 28``; not ``x1 / x2``, ``x - 3``),
    and where the added object's own answer f(y) is a possible one (not negative, whole where
    the gold is: "had 36, gave 42" is no story); ``added_first`` writes ``(y + x)``, where the
    story states the added object first."""
    def other(scale: int):
        return lambda x: Fraction(numbers[float(x)]) * scale if float(x) in numbers else x

    def summed(scale: int):
        def leaf(x):
            if float(x) not in numbers:
                return x
            return ("+", other(scale)(x), x) if added_first else ("+", x, other(scale)(x))
        return leaf

    def impossible(value: Fraction) -> bool:  # negative, or fractional where the gold is whole
        return value < 0 or (value.denominator != 1 and old.denominator == 1)

    try:
        tree = parse_infix(equation_side(gold_answer))
        old = _value(tree)
        new = _substitute(tree, summed(1) if add else lambda x: Fraction(numbers[float(x)]))
        value = _value(new)
        if add:
            alone = _value(_substitute(tree, other(1)))  # the added object's own answer
            if impossible(alone) or value != old + alone or (
                    _value(_substitute(tree, summed(2)))
                    != old + _value(_substitute(tree, other(2)))):
                return None
    except (KeyError, ZeroDivisionError, SvampError):
        return None
    if impossible(value) or new == tree:
        return None
    return _answer(new)


def number_values(text: str) -> list[float]:
    """The numbers ``text`` states, in order, as values (``1,200`` is 1200.0)."""
    return [float(x.replace(",", "")) for x in NUMBER.findall(text)]


def out_of_order(question: str, gold_answer: str) -> bool:
    """Whether a problem's gold equation uses its numbers in another order than the text
    states them (``Dan had $ 3 left … he had $ 4 at the start`` → ``4 - 3``): SVAMP's "change
    order of phrases / objects" variation; 368 of its 1000 problems, 570 of the 3138 training
    rows (the shift ``data.reorder`` works on)."""
    stated = number_values(question)
    at = [stated.index(x) for x in number_values(equation_side(gold_answer)) if x in stated]
    return at != sorted(at)


def same(a: float | None, b: float) -> bool:
    return a is not None and math.isfinite(a) and math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-4)


def score(text: str, gold: float) -> dict:
    """Both scores of one answer: ``correct`` (equation value, the headline; the stated number
    where no equation was written) and ``stated_correct``."""
    eq, st = equation_value(text), stated_value(text)
    return {"equation_value": eq, "stated": st, "has_equation": eq is not None,
            "correct": same(eq if eq is not None else st, gold), "stated_correct": same(st, gold)}
