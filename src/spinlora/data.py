"""Datasets -> chat-formatted token sequences, and the batching shared by every stage.

A row is a prompt (question) and a gold answer. Sources: a local ``.jsonl``/``.json`` file (read
here, so a malformed row is reported with file and line), SVAMP's files (its training ``.csv``,
``SVAMP.json`` or a Hub copy with its fields: converted by ``svamp.py``), or anything ``datasets.load_dataset``
takes (a Hub id such as ``openai/gsm8k``, or a local directory), with ``id:split`` to pick a split.

Sequences are ``prompt_ids + answer_ids``: the prompt is the model's chat template with the
generation prompt, the answer ends with the template's end-of-turn token. Generation uses exactly
the same prompt ids, so gold and generated answers are scored in the same format.
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import svamp
from .config import DataConfig

CALC_NOTE = re.compile(r"<<[^<>]*>>")


class DataError(ValueError):
    """A data file or row the user supplied is missing or malformed."""


@dataclass
class Example:
    """One prompt with its gold answer, as text and as token ids."""

    prompt: str
    answer: str
    prompt_ids: list[int]
    answer_ids: list[int]
    truncated: bool = False  # the answer was cut to fit max_length (then it has no end token)
    meta: dict = field(default_factory=dict)


def strip_calculator_notes(text: str) -> str:
    """GSM8K gold answers carry ``<<48/2=24>>`` notes the opponent never writes: remove them."""
    return CALC_NOTE.sub("", text)


def read_rows(path: Path) -> list[tuple[str, object]]:
    """The rows of a ``.json`` list or a jsonl file, each with where it stands ("FILE:LINE" or
    "FILE row N") for error messages; a malformed file is a DataError naming the line."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of rows")
        return [(f"{path} row {i + 1}", r) for i, r in enumerate(data)]
    items = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                items.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON line ({e.msg}); "
                                "each line must be one JSON object") from None
    return items


def _read_local(path: Path, cfg: DataConfig) -> list[dict]:
    if path.suffix == ".csv":  # SVAMP's training file (MAWPS + ASDiv-A): see svamp.py
        return _svamp(lambda: svamp.read_train_csv(path))
    items = read_rows(path)
    if items and svamp.is_svamp_row(items[0][1]):  # SVAMP.json: Body, Question, Equation, Answer
        return _svamp(lambda: svamp.convert(items, "test"))
    return [_check_row(row, cfg, where) for where, row in items]


def _svamp(read) -> list[dict]:
    try:
        return read()
    except svamp.SvampError as e:
        raise DataError(str(e)) from None


def _check_row(row, cfg: DataConfig, where: str) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with '{cfg.prompt_field}' and "
                        f"'{cfg.answer_field}', got {type(row).__name__}")
    for key in (cfg.prompt_field, cfg.answer_field):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise DataError(f"{where}: field '{key}' is missing or empty (fields present: "
                            f"{sorted(row)}); set data.prompt_field / data.answer_field")
    return {"prompt": row[cfg.prompt_field], "answer": row[cfg.answer_field]}


def load_rows(source: str, cfg: DataConfig, default_split: str) -> list[dict]:
    """Read ``{prompt, answer}`` rows from a local file, a local dataset directory or the Hub."""
    path = Path(source).expanduser()
    if path.is_file():
        return _read_local(path, cfg)
    name, _, split = source.partition(":")
    split = split or default_split
    looks_local = source.startswith((".", "/", "~")) or path.suffix in (".jsonl", ".json", ".csv")
    if looks_local and not Path(name).expanduser().exists():
        raise DataError(f"data file {source} not found. Point data.train / data.eval at a jsonl "
                        "file, a dataset directory, or a Hub id such as openai/gsm8k")
    import datasets

    local = Path(name).expanduser()
    target, config = (str(local), None) if local.exists() else (name, cfg.hub_config)
    try:
        ds = datasets.load_dataset(target, config, split=split)
    except Exception as e:  # datasets raises many types (offline, missing split, bad config)
        raise DataError(f"could not load dataset {source!r} (split {split!r}): {e}. Offline? "
                        "Use a local jsonl file (see ../shared/data/) or download it first") from None
    where = [f"{source} split {split} row {i}" for i in range(len(ds))]
    if len(ds) and svamp.is_svamp_row(ds[0]):  # a SVAMP copy such as ChilleD/SVAMP
        return _svamp(lambda: svamp.convert(list(zip(where, ds)), "test"))
    return [_check_row(r, cfg, w) for w, r in zip(where, ds)]


READ_AGAIN = "\nRead the question again: "
# the data settings that shape the chat a model is trained in (ChatFormat.from_config's fields)
CHAT_KEYS = ("system_prompt", "reread", "question_first")
# "Mrs. Hilt" is one sentence: a full stop after these words ends none
_ABBREVIATIONS = ("Mr", "Mrs", "Ms", "Dr", "St", "Jr", "Sr", "Mt", "vs", "etc", "No")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def split_question(prompt: str) -> tuple[str, str]:
    """(statements, question) of a word problem: the question is its last sentence, the text
    after the last sentence end (". ", "? " or "! " before more text; not after an abbreviation
    such as "Mrs."). A prompt of one sentence gives ("", prompt)."""
    text = prompt.strip()
    for m in reversed(list(_SENTENCE_END.finditer(text))):
        before = text[:m.start()]
        word = re.search(r"(\w+)\.$", before)
        if word and word.group(1) in _ABBREVIATIONS:
            continue
        return before, text[m.end():]
    return "", text


# words that may stand between "how many" and what it counts, and words that end it
_ASKED_LEAD = frozenset("more fewer less total different of the".split())
_ASKED_END = frozenset(
    "did does do are is were was has have had will would can could should must shall may might "
    "in on at for to from than with by into left altogether total together each per that "
    "them those these they he she it we you i his her their its".split())


def asked_object(prompt: str) -> str | None:
    """What a word problem's question counts or measures: "How many more pieces of gum did he
    chew?" -> "pieces of gum", "how much money" -> "money" (at most four words, lower-cased);
    None when the question has no "how many" / "how much" or nothing after it names a thing
    ("How many did he get?")."""
    _, question = split_question(prompt)
    m = re.search(r"\bhow (?:many|much)\b(.*)", question, re.I)
    if not m:
        return None
    words = []
    for w in re.findall(r"[A-Za-z'-]+|[^\sA-Za-z'-]", m.group(1)):
        low = w.lower()
        if not words and low in _ASKED_LEAD:
            continue
        if not re.fullmatch(r"[A-Za-z][A-Za-z'-]*", w) or low in _ASKED_END:
            break
        words.append(low)
        if len(words) == 4:
            break
    while words and words[-1] in _ASKED_LEAD:  # "cases of 12 boxes" -> "cases"
        words.pop()
    return " ".join(words) or None


def label_answer(prompt: str, answer: str) -> str:
    """``data.label_answer``: ``answer`` after what its question counts ("crayons: " + answer),
    or as it is when ``asked_object`` finds nothing."""
    asked = asked_object(prompt)
    return f"{asked}: {answer}" if asked else answer


class ChatFormat:
    """Turns prompts and answers into token ids with the tokenizer's own chat template."""

    def __init__(self, tokenizer, system_prompt: str | None = None, reread: bool = False,
                 question_first: bool = False):
        self.tok = tokenizer
        self.system_prompt = system_prompt
        self.reread = reread
        self.question_first = question_first
        self.end_id = self._end_of_turn_id()
        ids = {self.end_id, tokenizer.eos_token_id}
        self.stop_ids = sorted(i for i in ids if i is not None)

    @classmethod
    def from_config(cls, tokenizer, cfg: DataConfig) -> "ChatFormat":
        return cls(tokenizer, *(getattr(cfg, k) for k in CHAT_KEYS))

    def user_text(self, prompt: str) -> str:
        """The user turn: the prompt; with ``question_first`` its question (``split_question``)
        on the first line and its statements after it; with ``reread`` that, then
        ``READ_AGAIN`` and that once more (Re-Reading, Xu et al. 2024). Both let a causal model
        read the problem's statements with its question already in view."""
        if self.question_first:
            statements, question = split_question(prompt)
            prompt = f"{question}\n{statements}" if statements else question
        return f"{prompt}{READ_AGAIN}{prompt}" if self.reread else prompt

    def messages(self, prompt: str, before: list[tuple[str, str]] = ()) -> list[dict]:
        """The chat up to ``prompt``'s user turn: the system prompt (if any), the earlier
        (prompt, answer) turns ``before`` (few-shot), then ``prompt``; every user turn in
        ``user_text``'s form."""
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for shot, answer in before:
            msgs += [{"role": "user", "content": self.user_text(shot)},
                     {"role": "assistant", "content": answer}]
        return msgs + [{"role": "user", "content": self.user_text(prompt)}]

    def _end_of_turn_id(self) -> int:
        """The token the template puts after an assistant turn (<|im_end|>, <|eot_id|>, ...)."""
        mark = "XQZMARK"
        text = self.tok.apply_chat_template(
            self.messages("hi") + [{"role": "assistant", "content": mark}], tokenize=False)
        suffix = text.split(mark, 1)[1]
        ids = self.tok(suffix, add_special_tokens=False).input_ids
        return ids[0] if ids else self.tok.eos_token_id

    def prompt_ids(self, prompt: str) -> list[int]:
        return list(self.tok.apply_chat_template(
            self.messages(prompt), add_generation_prompt=True, tokenize=True, return_dict=False))

    def answer_ids(self, answer: str) -> list[int]:
        return self.tok(answer, add_special_tokens=False).input_ids + [self.end_id]


# the keys a data variation adds to the rows it changed (add_distractors, conjoin_objects,
# reorder_statements)
VARIED_KEYS = ("distractor", "conjoined", "moved")


def prompt_pool(examples: list[Example], rows: str, key: str) -> list[Example]:
    """The SFT examples a stage draws its prompts from: all, (``rows="varied"``) those a data
    variation changed, or (``rows="plain"``, rl.plain_prompts) those none changed. ``key``
    names the setting in the error."""
    if rows == "all":
        return examples
    if rows == "plain":
        plain = [e for e in examples if not e.meta.get("varied")]
        if not plain:
            raise DataError(f"{key}: every SFT row was changed by a data variation, none is left "
                            f"plain; lower the variation's share or set {key}=0")
        return plain
    varied = [e for e in examples if e.meta.get("varied")]
    if not varied:
        raise DataError(f"{key}=varied: no SFT row was changed by a data variation; turn one on "
                        "(data.conjoin, data.distractors or data.reorder above 0) or use "
                        f"{key}=all")
    return varied


def build_examples(rows: list[dict], fmt: ChatFormat, cfg: DataConfig) -> tuple[list[Example], dict]:
    """Tokenize rows, applying the overlong policy. Returns (examples, counts for the report).
    A row's ``index`` (its place in its file) and ``value`` (SVAMP's gold value) are kept in
    ``Example.meta``."""
    examples, dropped, truncated = [], 0, 0
    for r in rows:
        answer = strip_calculator_notes(r["answer"]) if cfg.strip_calculator_notes else r["answer"]
        if cfg.label_answer:
            answer = label_answer(r["prompt"], answer)
        p_ids, a_ids = fmt.prompt_ids(r["prompt"]), fmt.answer_ids(answer)
        cut = False
        if len(p_ids) + len(a_ids) > cfg.max_length:
            room = cfg.max_length - len(p_ids)
            if cfg.overlong == "drop" or room < 1:
                dropped += 1
                continue
            a_ids, cut = a_ids[:room], True
            truncated += 1
        meta = {k: r[k] for k in ("index", "value") if k in r}
        if any(k in r for k in VARIED_KEYS):
            meta["varied"] = True
        examples.append(Example(r["prompt"], answer, p_ids, a_ids, cut, meta))
    return examples, {"rows": len(rows), "kept": len(examples), "dropped_overlong": dropped,
                      "truncated_overlong": truncated, "policy": cfg.overlong,
                      "max_length": cfg.max_length}


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


_STOP = frozenset("""about after also been before does each every from have here how into
many more much only other over some than that their them then there these they this those
were what when where which while will with would your left total""".split())


_PRONOUNS = frozenset("he she they it i we you his her their its our my this that these those "
                     "then now after later".split())


def _names(text: str) -> set[str]:
    """Capitalised words not at a sentence start: the people and places a problem is about."""
    return {w for s in _sentences(text) for w in re.findall(r"(?<=\s)[A-Z][a-z]+", s)}


def _content_words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]{4,}", text.lower()) if w not in _STOP}


def add_distractors(rows: list[dict], pool: list[dict], rate: float, seed: int
                    ) -> tuple[list[dict], int]:
    """``data.distractors``: a seeded share ``rate`` of ``rows`` get one sentence inserted
    between two of theirs, before the last (the question), taken from another row of ``pool``
    (one about the same things where there is one, never about the problem's own named people):
    a statement (not its row's question) that holds exactly one number. The gold answer stays:
    the inserted number is irrelevant, SVAMP's "add irrelevant information" variation (Patel et
    al. 2021, whose test problems hold such numbers in 447 of 1000 cases, the training rows in
    340 of 3138). Returns the rows (new dicts where changed) and how many changed."""
    if rate <= 0:
        return rows, 0
    # a statement with one number whose subject is named ("She ate 5 cupcakes" put into
    # another girl's problem would change its answer)
    candidates = [(i, s) for i, r in enumerate(pool) for s in _sentences(r["prompt"])[:-1]
                  if len(svamp.NUMBER.findall(s)) == 1 and 4 <= len(s.split()) <= 30
                  and s.split()[0].lower() not in _PRONOUNS]
    if not candidates:
        return rows, 0
    by_word: dict[str, list[int]] = {}  # a content word -> the candidates that use it
    for j, (_, sentence) in enumerate(candidates):
        for w in _content_words(sentence):
            by_word.setdefault(w, []).append(j)
    named = [_names(sentence) for _, sentence in candidates]  # once, not once per row

    def insert(r: dict, rng: random.Random) -> dict | None:
        parts = _sentences(r["prompt"])
        # on topic where possible: a sentence sharing a content word (cupcakes, marbles) with
        # the problem, as SVAMP's irrelevant numbers are about the problem's own things
        names = _names(r["prompt"])  # a sentence about the problem's own people could be relevant
        near = sorted({j for w in _content_words(r["prompt"]) for j in by_word.get(w, ())
                       if not names & named[j]})
        j = near[rng.randrange(len(near))] if near else rng.randrange(len(candidates))
        src, sentence = candidates[j]
        # the fallback may name the problem's people; a row's own sentence is not irrelevant
        if names & named[j] or pool[src]["prompt"] == r["prompt"]:
            return None
        at = 0 if len(parts) < 2 else rng.randrange(1, len(parts))
        return dict(r, prompt=" ".join(parts[:at] + [sentence] + parts[at:]), distractor=sentence)
    return _change_share(rows, rate, seed, insert)


# "45 pears": a count and the plural noun it counts, not followed by "of" (a container: "3 boxes
# of crayons") or "and" (a list already)
_COUNTED = re.compile(r"\b(\d[\d,]*(?:\.\d+)?) ([a-z]{3,}s)\b(?! (?:of|and)\b)")
# nouns that measure rather than count things (time, money, length, weight, volume, scores) or
# group them: "and 17 minutes" beside "45 pears" would be no object of the problem's kind
_MEASURES = frozenset("""seconds minutes hours days weeks months years times dollars cents
points feet miles inches yards meters centimeters kilometers pounds ounces grams kilograms
degrees gallons liters cups quarts pints percent groups rows teams classes grades rounds
steps laps pages chapters words letters questions problems games goals runs tons""".split())


# "he buys 6 more", "another 44", "19 are about school", "graded 4, but": a number that names
# nothing refers back to the last thing counted, which a second object would make ambiguous
_REFERS_BACK = frozenset("""more less fewer of are were is was and to in on at for from each
with left times but then if so or than as""".split())


def _names_nothing(after: str) -> bool:
    """Whether the text ``after`` a number starts with no word or with one of ``_REFERS_BACK``."""
    word = re.match(r"\s*([a-z]+)", after)
    return not word or word.group(1) in _REFERS_BACK


def _bare_number(text: str) -> bool:
    """Whether a number in ``text`` (not an amount of money) is followed by no word or by one of
    ``_REFERS_BACK``."""
    return any(_names_nothing(text[m.end():]) for m in svamp.NUMBER.finditer(text)
               if not text[:m.start()].rstrip().endswith("$"))


# "8 more apples": a count, an optional "more", and the plural noun it counts (data.conjoin_every)
_COUNTED_MORE = re.compile(r"\b(\d[\d,]*(?:\.\d+)?) (more )?([a-z]{3,}s)\b(?! (?:of|and)\b)")
# "8 more" / "another 4" with no noun after it (none, or a word of _REFERS_BACK)
_MORE_BARE = re.compile(r"\b(\d[\d,]*(?:\.\d+)? more|another \d[\d,]*(?:\.\d+)?)", re.IGNORECASE)
# "8 more apples" (a plural of four letters or more after "more"), read as "8 apples"
_MORE_NAMED = re.compile(r"(\d) more (?=[a-z]{3,}s\b)")


def _name_more(text: str, noun: str) -> str:
    """``text`` with each "N more" / "another N" that names nothing ("Susan gives Sean 8 more")
    given ``noun``, the one thing the problem counts: "8 more apples"."""
    return _MORE_BARE.sub(lambda m: m.group(1) + " " + noun if _names_nothing(text[m.end():])
                          else m.group(1), text)


def _new_numbers(text: str) -> list[int]:
    """Whole numbers from 2 to twice the largest the text states (at least 18), none stated:
    the added object's candidates."""
    stated = set(svamp.number_values(text))
    top = max(9, int(max(stated, default=9)))
    return [n for n in range(2, 2 * top + 1) if n not in stated]


def conjoin_objects(rows: list[dict], pool: list[dict], rate: float, seed: int,
                    before: float = 0.0, every: bool = False, ask: float = 0.0,
                    both: float = 0.0) -> tuple[list[dict], int]:
    """``data.conjoin``: a seeded share ``rate`` of ``rows`` get a second object beside one the
    question asks about, in the same statement: "His room has 4 shelves" becomes "His room has 4
    shelves and 40 cabinets" when the question asks about shelves. The added noun counts things
    in another training row of ``pool`` (never a measure, never a word of this problem) and its
    number is new to the problem, so the gold answer stays. It is SVAMP's commonest form of an
    irrelevant number (a second quantity about the problem's own people: "Paul got 601 crayons
    and 406 erasers … how many crayons"), where ``data.distractors`` adds a whole sentence from
    another problem. Only a statement before the last sentence (the question) changes; a row
    with no counted noun that its question names, or with a number that names nothing ("he buys
    6 more"), stays as it is. Returns the rows (new dicts where changed, ``conjoined`` the
    added words) and how many changed. ``before``: the share of added objects put before the
    asked one instead ("40 cabinets and 4 shelves"), so that the place after "and" does not
    tell which number is irrelevant (``data.conjoin_before``). ``every`` (``data.conjoin_every``):
    the added noun goes beside every count of the asked noun in the statements, each with its
    own new number ("Jack received 10 emails and 12 letters … then 3 emails and 44 letters",
    SVAMP's parallel form), one side for the whole row; and in a problem that counts one kind
    of thing only, a bare "8 more" / "another 4" first gets that noun ("8 more apples"), so
    that it stays unambiguous and the row can change (``conjoined`` then lists the added words,
    joined by " | "). ``ask`` (``data.conjoin_ask``, with ``every``): the share of those rows
    whose question then asks about the added object instead ("How many tomatoes does Eugene
    have?"), the gold equation written over the added object's numbers (``svamp.swap_numbers``;
    ``asks_added`` marks them), where every number the equation uses is a count of the asked
    noun stated once, and the new value is whole and not negative; the story's two objects
    then each answer a question, so that the question alone tells which numbers count.
    ``both`` (``data.conjoin_both``, with ``every``): the share of those rows (drawn beside
    ``ask``'s) whose question asks about both objects ("How many pencils and tomatoes does
    Eugene have?", SVAMP's "how many crackers and cakes"), the gold equation with each asked
    count ``x`` written ``(x + y)``, ``y`` its added object's number (``svamp.swap_numbers(add=
    True)``: only where that is the sum of the two objects' answers; ``asks_both`` marks them),
    so that the story's objects are not always one asked and one left out."""
    if rate <= 0:
        return rows, 0
    seen = Counter(m.group(2) for r in pool for m in _COUNTED.finditer(r["prompt"].lower()))
    nouns = sorted(w for w, c in seen.items() if c >= 3 and w not in _MEASURES)

    def other_nouns(words: set[str]) -> list[str]:
        """The pool's counted nouns that are none of the problem's words."""
        return [w for w in nouns if w not in words and w[:-1] not in words]

    def conjoin_every(r: dict, rng: random.Random) -> dict | None:
        text = r["prompt"]
        kinds = {m.group(2) for m in _COUNTED.finditer(text.lower())} - _MEASURES
        if len(kinds) == 1:
            text = _name_more(text, next(iter(kinds)))
        parts = _sentences(text)
        # "8 more apples" names its noun: only a number that names nothing keeps the row out
        if len(parts) < 2 or _bare_number(_MORE_NAMED.sub(r"\1", text.lower())):
            return None
        words = set(re.findall(r"[a-z]+", text.lower()))
        asked = set(re.findall(r"[a-z]+", parts[-1].lower()))
        spots = [(i, m) for i, sentence in enumerate(parts[:-1])
                 for m in _COUNTED_MORE.finditer(sentence)
                 if m.group(3) in asked and m.group(3) not in _MEASURES]
        others = other_nouns(words)
        if not spots or not others:
            return None
        target = spots[rng.randrange(len(spots))][1].group(3)
        at = [(i, m) for i, m in spots if m.group(3) == target]
        fresh = _new_numbers(text)
        noun = others[rng.randrange(len(others))]
        numbers = rng.sample(fresh, len(at))
        ahead = bool(before) and rng.random() < before
        added = []
        for (i, m), number in reversed(list(zip(at, numbers))):  # from the end: offsets hold
            more = m.group(2) or ""
            if ahead:
                words_in = f"{number} {more}{noun} and "
                parts[i] = parts[i][:m.start()] + words_in + parts[i][m.start():]
            else:
                words_in = f" and {number} {more}{noun}"
                parts[i] = parts[i][:m.end()] + words_in + parts[i][m.end():]
            added.insert(0, words_in)
        changed = dict(r, prompt=" ".join(parts), conjoined=" | ".join(added))
        draw = rng.random() if ask or both else 1.0  # drawn only then: rows stay draw for draw
        if draw < ask + both and not r.get("answer_mismatch"):
            values = [float(m.group(1).replace(",", "")) for _, m in at]
            counts = Counter(svamp.number_values(text))
            swapped = svamp.swap_numbers(r["answer"], dict(zip(values, numbers)),
                                         add=draw >= ask, added_first=ahead) \
                if all(counts[v] == 1 for v in values) else None
            pattern = re.compile(rf"\b{target}\b", re.IGNORECASE)
            if draw < ask:
                question, key = pattern.sub(noun, parts[-1]), "asks_added"
            else:  # "how many pencils and tomatoes", in the order the statements give them
                both_nouns = f"{noun} and {target}" if ahead else f"{target} and {noun}"
                question = pattern.sub(both_nouns, parts[-1]) \
                    if len(pattern.findall(parts[-1])) == 1 else parts[-1]
                key = "asks_both"
            if swapped and question != parts[-1]:
                changed.update(prompt=" ".join(parts[:-1] + [question]), answer=swapped[0],
                               value=swapped[1], **{key: True})
        return changed

    def conjoin(r: dict, rng: random.Random) -> dict | None:
        parts = _sentences(r["prompt"])
        if len(parts) < 2 or _bare_number(r["prompt"].lower()):
            return None  # a bare number could come to mean the added object
        words = set(re.findall(r"[a-z]+", r["prompt"].lower()))
        asked = set(re.findall(r"[a-z]+", parts[-1].lower()))
        spots = [(i, m) for i, sentence in enumerate(parts[:-1])
                 for m in _COUNTED.finditer(sentence)
                 if m.group(2) in asked and m.group(2) not in _MEASURES]
        others = other_nouns(words)
        if not spots or not others:
            return None
        i, m = spots[rng.randrange(len(spots))]
        fresh = _new_numbers(r["prompt"])
        number, noun = fresh[rng.randrange(len(fresh))], others[rng.randrange(len(others))]
        if before and rng.random() < before:  # drawn only then: before=0 keeps the old rows
            added = f"{number} {noun} and "
            sentence = parts[i][:m.start()] + added + parts[i][m.start():]
        else:
            added = f" and {number} {noun}"
            sentence = parts[i][:m.end()] + added + parts[i][m.end():]
        return dict(r, prompt=" ".join(parts[:i] + [sentence] + parts[i + 1:]), conjoined=added)
    return _change_share(rows, rate, seed, conjoin_every if every else conjoin)


def _change_share(rows: list[dict], rate: float, seed: int, change) -> tuple[list[dict], int]:
    """Rows with a seeded share ``rate`` passed through ``change(row, rng)`` (None: the row
    stays as it is); the rows and how many changed."""
    rng, out, changed = random.Random(seed), [], 0
    for r in rows:
        new = change(r, rng) if rng.random() < rate else None
        out.append(r if new is None else new)
        changed += new is not None
    return out, changed


_REFERS = frozenset("he she they it him her them his hers their its theirs himself herself "
                    "themselves".split())


def reorder_statements(rows: list[dict], rate: float, seed: int) -> tuple[list[dict], int]:
    """``data.reorder``: a seeded share ``rate`` of ``rows`` get one statement with a number
    moved to the front of the problem; the question stays last and the gold answer stays. The
    numbers then come in another order than the gold equation uses them: SVAMP's "change order
    of phrases / objects" variation (368 of its 1000 gold equations use the problem's numbers
    out of the text's order, 570 of the 3138 training rows do; ``svamp.out_of_order``). Only
    a statement that needs nothing before it moves: one that is not first, holds a number, and
    neither opens with a discourse word ("Then", "Now") nor holds a pronoun ("Robert gave her
    39 markers" before "Megan had 49" would lose who "her" is). A row with no such statement
    stays as it is. Returns the rows (new dicts where changed) and how many changed."""
    if rate <= 0:
        return rows, 0

    def move(r: dict, rng: random.Random) -> dict | None:
        parts = _sentences(r["prompt"])
        movable = [i for i, s in enumerate(parts[:-1]) if i > 0 and svamp.NUMBER.search(s)
                   and s.split()[0].lower() not in _PRONOUNS
                   and not _REFERS & set(re.findall(r"[a-z]+", s.lower()))]
        if not movable:
            return None
        i = movable[rng.randrange(len(movable))]
        first = parts[0][:1].upper() + parts[0][1:]  # some rows are lower-cased
        return dict(r, prompt=" ".join([parts[i], first] + parts[1:i] + parts[i + 1:]),
                    moved=parts[i])
    return _change_share(rows, rate, seed, move)


def subset(items: list, n: int | None, seed: int) -> list:
    """A reproducible random subset of ``n`` items (all when n is None or >= len)."""
    if n is None or n >= len(items):
        return list(items)
    idx = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in idx]


@dataclass
class Batch:
    """Right-padded sequences; ``answer_mask`` marks answer tokens (the ones that are scored)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    answer_mask: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device),
                     self.answer_mask.to(device))


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
    """Pad (prompt_ids, answer_ids) pairs dynamically to the longest in the batch."""
    length = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), length), pad_id, dtype=torch.long)
    attn = torch.zeros((len(pairs), length), dtype=torch.long)
    ans = torch.zeros((len(pairs), length), dtype=torch.bool)
    for i, (p, a) in enumerate(pairs):
        n = len(p) + len(a)
        ids[i, :n] = torch.tensor(p + a)
        attn[i, :n] = 1
        ans[i, len(p):n] = True
    return Batch(ids, attn, ans)
