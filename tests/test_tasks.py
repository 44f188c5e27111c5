"""Benchmark loaders on the real shared files, the shared-prefix log-likelihood scorer against
brute force, accuracy on items with known answers, and malformed files."""
import pytest
import torch

from conftest import SHARED
from spinlora.data import DataError
from spinlora.evaluate.choice import evaluate_choice_task
from spinlora.evaluate.loglik import score_choices
from spinlora.evaluate.tasks import Item, load_task


@pytest.mark.parametrize("task,count", [("mmlu", 14042), ("winogrande", 1267),
                                        ("arc_challenge", 1172), ("arc_easy", 2376),
                                        ("hellaswag", 10042)])
def test_local_loaders_row_counts(task, count):
    items = load_task(task, SHARED)
    assert len(items) == count
    for it in items[:50]:
        assert len(it.contexts) == len(it.continuations) and 0 <= it.gold < len(it.contexts)


def test_prompt_formats_follow_lm_eval():
    mmlu = load_task("mmlu", SHARED, shots=5)[0]
    assert mmlu.contexts[0].startswith("The following are multiple choice questions (with "
                                       "answers) about abstract algebra.\n\n")
    assert mmlu.contexts[0].count("\nAnswer:") == 6 and mmlu.continuations == [" A", " B", " C", " D"]
    assert load_task("mmlu", SHARED, shots=0)[0].contexts[0].count("\nAnswer:") == 1
    arc = load_task("arc_challenge", SHARED)[0]
    assert arc.contexts[0].startswith("Question: ") and arc.contexts[0].endswith("\nAnswer:")
    wg = load_task("winogrande", SHARED)[0]
    assert wg.contexts[0] != wg.contexts[1] and wg.continuations[0] == wg.continuations[1]
    assert wg.continuations[0].startswith(" ")


def test_malformed_files_report_file_and_line(tmp_path):
    (tmp_path / "arc").mkdir()
    (tmp_path / "arc" / "arc_challenge_test.llmfoundry.jsonl").write_text(
        '{"query": "Question: q", "choices": ["a", "b"], "gold": 0}\n{"query": "x", "choi\n')
    with pytest.raises(DataError, match=r"arc_challenge_test.llmfoundry.jsonl:2: malformed"):
        load_task("arc_challenge", tmp_path)
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    (tmp_path / "mmlu" / "test" / "x_test.csv").write_text(
        "question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,2\nq,a,b,c,d,zz\n")
    with pytest.raises(DataError, match=r"x_test.csv:3: expected columns"):
        load_task("mmlu", tmp_path)


def _brute(model, tok, context, continuation):
    from spinlora.evaluate.loglik import encode_pair

    ctx, cont = encode_pair(tok, context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        lp = model(ids).logits[0, :-1].log_softmax(-1)
    pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
    return lp[pos, torch.tensor(cont)].sum().item()


def test_shared_prefix_scores_equal_brute_force(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from spinlora.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    cases = [(["Question: 2+2?\nAnswer:"] * 3, [" 4", " five", " 22"]),            # shared context
             (["The cup fell, so Tom", "The cup fell, so Ann"], [" ran.", " ran."])]  # partial
    for contexts, conts in cases:
        got = score_choices(model, tok, contexts, conts)
        for c, k, s in zip(contexts, conts, got):
            assert s.logprob == pytest.approx(_brute(model, tok, c, k), abs=1e-4)
            assert s.n_chars == len(k.lstrip(" "))  # lm-eval: the choice without its delimiter


def test_many_questions_per_pass_equal_brute_force(tiny_model_dir):
    """Several questions in one batch (and one that differs at its first token, and a small
    budget that splits them) score as brute force does; so does the full-sequence fallback."""
    from transformers import AutoModelForCausalLM

    from spinlora.evaluate import loglik
    from spinlora.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    questions = [(["Question: 2+2?\nAnswer:"] * 3, [" 4", " five", " 22"]),
                 (["The cup fell, so Tom", "The cup fell, so Ann"], [" ran.", " ran."]),
                 (["Tom", "Ann"], [" ran off.", " ran off."]),            # differ at token 0
                 (["A long question about nothing at all:"] * 2, [" yes", " no, never"])]
    want = [[_brute(model, tok, c, k) for c, k in zip(*q)] for q in questions]
    for budget in (4096, 40):
        got = loglik.score_questions(model, tok, questions, token_budget=budget)
        assert [[s.logprob for s in q] for q in got] == [pytest.approx(w, abs=1e-4) for w in want]
    calls = []
    import spinlora.scoring as scoring
    orig = scoring._full_pass

    def spy(*a):
        calls.append(1)
        return orig(*a)

    mp = pytest.MonkeyPatch()
    mp.setattr(scoring, "shared_prompt_pass", lambda *a, **k: None)
    mp.setattr(scoring, "_full_pass", spy)
    try:
        got = loglik.score_questions(model, tok, questions)
    finally:
        mp.undo()
    assert calls and [[s.logprob for s in q] for q in got] == [pytest.approx(w, abs=1e-4) for w in want]


def test_accuracy_on_items_with_known_answers(tiny_model_dir):
    """The model's own greedy continuation must beat random strings of the same length."""
    from transformers import AutoModelForCausalLM

    from spinlora.models import load_tokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tok = load_tokenizer(str(tiny_model_dir))
    g = torch.Generator().manual_seed(0)
    items = []
    for k, ctx in enumerate(["Question: what is 3?\nAnswer:", "Sam went to the", "x y z"]):
        ids = tok(ctx, add_special_tokens=False, return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=2)
        greedy = tok.decode(out[0, ids.shape[1]:])
        noise = [tok.decode(torch.randint(40, 90, (6,), generator=g)) for _ in range(3)]
        choices = noise[:k] + [greedy] + noise[k:]
        items.append(Item([ctx] * 4, choices, k))
    res = evaluate_choice_task(model, tok, "forced", items)
    assert res["acc"] == 1.0 and res["n"] == 3
    assert all(s.greedy for s in [score_choices(model, tok, it.contexts, it.continuations)[it.gold]
                                  for it in items])


def test_acc_norm_length_excludes_the_delimiter():
    """lm-eval: completion_len = len(choice) of doc_to_choice, not of ' ' + choice."""
    from spinlora.evaluate.loglik import choice_chars

    assert choice_chars(" Paris") == 5 and choice_chars("Paris") == 5 and choice_chars(" A") == 1
