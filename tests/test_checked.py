"""A checked SVAMP answer (``eval.checked_beams``): greedy answers whose value is missing or
negative are decoded again by beam search, and the best beam with a value >= 0 is the answer;
a ``MODEL+checked@k`` row that pairs with greedy's."""
from __future__ import annotations

import json

import pytest
import torch

# greedy answers for gold values 7, 1, 5, 2
GREEDY = ["3 + 4 = 7\n#### 7",         # right, passes: kept, no beam search
          "3 - 4 = 1\n#### 1",         # its equation's value is -1: checked, beam 1 replaces it
          "I do not know.",            # no value: checked, every beam negative, so it stays
          "9 - 4 = 5\n#### 5"]         # wrong but >= 0: kept (no label is read)
BEAMS = {1: ["3 - 4 = -1\n#### -1", "4 - 3 = 1\n#### 1", "4 + 3 = 7\n#### 7"],
         2: ["1 - 6 = -5\n#### -5", "2 - 7 = -5\n#### -5", "Sorry."]}


def test_checked_answer_replaces_only_failed_greedy_answers(tiny_model_dir, monkeypatch):
    import spinlora.evaluate.gsm8k as g
    from spinlora.accounting import Accountant
    from spinlora.config import GenerationConfig
    from spinlora.data import ChatFormat, Example
    from spinlora.generate import Generation
    from spinlora.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    fmt = ChatFormat(tok)
    examples = [Example(f"Problem {i}?", f"#### {v:g}", fmt.prompt_ids(f"Problem {i}?"), [1],
                        meta={"value": v, "index": i}) for i, v in enumerate([7.0, 1.0, 5.0, 2.0])]
    monkeypatch.setattr(g, "generate", lambda model, tok, prompts, cfg, stop_ids, **kw: (
        [Generation([5], t, True) for t in GREEDY[:len(prompts)]], len(prompts)))
    searched = []

    def beams(model, tok, prompts, cfg, stop_ids, k, **kw):
        rows = [next(j for j, e in enumerate(examples) if e.prompt_ids == p) for p in prompts]
        searched.append((rows, k))
        return [[Generation([5, 6], t, True) for t in BEAMS[i][:k]] for i in rows], 2 * k * len(rows)

    monkeypatch.setattr(g, "beam_answers", beams)
    acct = Accountant(torch.device("cpu"))
    r = g.evaluate_svamp_checked(None, tok, fmt, examples, GenerationConfig(), acct, "m", 3)
    assert searched == [([1, 2], 3)]  # one search over the failed problems
    s = r["samples"]
    assert [x["output"] for x in s] == [GREEDY[0], BEAMS[1][1], GREEDY[2], GREEDY[3]]
    assert [x["correct"] for x in s] == [True, True, False, False]
    assert s[1]["beam"] == 1 and s[1]["greedy_output"] == GREEDY[1] and not s[1]["greedy_correct"]
    assert s[2]["checked"] and "beam" not in s[2] and "checked" not in s[0]
    assert (r["greedy_acc"], r["acc"], r["failed_check"], r["replaced"]) == (0.25, 0.5, 2, 1)
    assert r["acc_stderr"] == pytest.approx((0.5 * 0.5 / 3) ** 0.5)
    assert acct.summary()["phases"]["eval_beams[m svamp]"]["tokens"] == 12

    # the greedy row's answers are used as they are for the same problems, in the same order;
    # for other problems they are decoded again
    row = {"n": 4, "acc": 0.25, "finished_rate": 1.0}
    kept = [{**x, "output": GREEDY[0], "correct": True, "equation_value": 7.0,
             "has_equation": True, "stated": 7.0, "stated_correct": True}
            for x in r["samples"]]
    for x in kept:
        for k in ("checked", "beam", "greedy_output", "greedy_correct"):
            x.pop(k, None)
    searched.clear()
    again = g.evaluate_svamp_checked(None, tok, fmt, examples, GenerationConfig(), acct, "m", 3,
                                     greedy=(row, kept))
    assert searched == [] and again["greedy_acc"] == 0.25 and again["acc"] == 1.0
    assert again["failed_check"] == 0 and again["finished_rate"] == 1.0
    other = g.evaluate_svamp_checked(None, tok, fmt, examples, GenerationConfig(), acct, "m", 3,
                                     greedy=(row, kept[::-1]))
    assert searched == [([1, 2], 3)] and other["acc"] == 0.5


def test_beam_answers_are_the_models_best_first(tiny_model_dir):
    """A real beam search on the tiny model: k answers, distinct, the first the highest-scoring
    one by transformers' own score (its sequences come back sorted)."""
    from transformers import AutoModelForCausalLM

    from spinlora.config import GenerationConfig
    from spinlora.generate import beam_answers
    from spinlora.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    prompts = [tok(t)["input_ids"] for t in ("Tom has 3 apples and", "Ann has", "Bo had 7 pens")]
    cfg = GenerationConfig(max_new_tokens=6)
    out, produced = beam_answers(model, tok, prompts, cfg, [tok.eos_token_id], 3, batch=2)
    assert [len(o) for o in out] == [3, 3, 3]
    assert produced == sum(len(a.ids) for o in out for a in o)
    for prompt, o in zip(prompts, out):
        assert len({tuple(a.ids) for a in o}) == 3 and all(0 < len(a.ids) <= 6 for a in o)
        # each prompt alone, unpadded: the same best beam as in its left-padded batch
        ids = torch.tensor([prompt])
        ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=3,
                             num_return_sequences=1, do_sample=False, max_new_tokens=6,
                             eos_token_id=[tok.eos_token_id], pad_token_id=tok.pad_token_id)
        assert ref[0, len(prompt):].tolist()[:len(o[0].ids)] == o[0].ids


def test_beam_calls_are_split_over_processes(tiny_model_dir, monkeypatch):
    """Under two processes, process 1 runs the beam-search calls 1, 3, … (in length order) and
    the merged answers are the one process's; here its peers' share comes back empty."""
    from transformers import AutoModelForCausalLM

    from spinlora import dist
    from spinlora.config import GenerationConfig
    from spinlora.generate import beam_answers
    from spinlora.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    texts = ("Ann has", "Bo had 7 pens", "Tom has 3 apples and", "Tom has 3 apples and 4 pears")
    prompts = [tok(t)["input_ids"] for t in texts]  # in length order
    assert sorted(map(len, prompts)) == list(map(len, prompts))
    cfg = GenerationConfig(max_new_tokens=4)
    alone, _ = beam_answers(model, tok, prompts, cfg, [tok.eos_token_id], 2, batch=1)
    monkeypatch.setattr(dist, "world", lambda: 2)
    monkeypatch.setattr(dist, "rank", lambda: 1)
    monkeypatch.setattr(dist, "gather", lambda local, n: [local.get(i, []) for i in range(n)])
    monkeypatch.setattr(dist, "sum_floats", lambda v: v)
    mine, produced = beam_answers(model, tok, prompts, cfg, [tok.eos_token_id], 2, batch=1)
    assert [len(o) for o in mine] == [0, 2, 0, 2]
    assert [[a.ids for a in o] for o in mine[1::2]] == [[a.ids for a in o] for o in alone[1::2]]
    assert produced == sum(len(a.ids) for o in mine for a in o)


def test_beam_batch_is_generations_rows_over_the_beams(tiny_model_dir, monkeypatch):
    """Without ``batch``: ``generation.batch_size`` rows a call, ``beams`` of them a prompt; with
    ``auto`` the rows ``auto_batch_size`` finds memory for, as ``generate`` takes them."""
    from transformers import AutoModelForCausalLM

    import spinlora.generate as g
    from spinlora.config import GenerationConfig
    from spinlora.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    prompts = [tok(t)["input_ids"] for t in ("Ann has", "Bo had 7 pens", "Tom has 3 apples")]
    calls = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: calls.append(
        len(kw["input_ids"])) or real(**kw))
    g.beam_answers(model, tok, prompts, GenerationConfig(max_new_tokens=3, batch_size=5),
                   [tok.eos_token_id], 2)
    assert calls == [2, 1]  # 5 rows // 2 beams = 2 prompts a call
    calls.clear()
    monkeypatch.setattr(g, "auto_batch_size", lambda model, prompts, new, engine="torch": 7)
    g.beam_answers(model, tok, prompts, GenerationConfig(max_new_tokens=3, batch_size="auto"),
                   [tok.eos_token_id], 2)
    assert calls == [3]  # 7 rows // 2 beams = 3 prompts a call


def test_checked_row_in_the_evaluation_pairs_with_greedy(tiny_cfg, tmp_path):
    """``eval.checked_beams=2``: a ``base+checked@2`` row after ``base``, SVAMP only; where the
    check passed its answer is the greedy row's own text."""
    from spinlora import run
    from spinlora.paired import compare, read_samples

    from conftest import write_svamp

    root = write_svamp(tmp_path / "data")
    tiny_cfg.stages, tiny_cfg.eval.models = ["eval"], ["base"]
    tiny_cfg.eval.tasks, tiny_cfg.eval.data_root, tiny_cfg.eval.limit = ["svamp"], str(root), 4
    tiny_cfg.eval.checked_beams = 2
    tiny_cfg.generation.max_new_tokens = 8
    assert run(tiny_cfg)["status"] == "ok"
    ev_dir = tmp_path / "run" / "eval"
    ev = json.loads((ev_dir / "result.json").read_text())
    assert [r["label"] for r in ev["rows"]] == ["base", "base+checked@2"]
    c = ev["rows"][1]["tasks"]["svamp"]
    # the random tiny model writes no number: its answers fail the check and take the beams
    assert c["n"] == 4 and c["checked_beams"] == 2 and 0 <= c["replaced"] <= c["failed_check"] <= 4
    assert c["failed_check"] >= 1
    assert c["greedy_acc"] == ev["rows"][0]["tasks"]["svamp"]["acc"]
    checked = read_samples(ev_dir / "samples_base+checked@2_svamp.jsonl")
    greedy = read_samples(ev_dir / "samples_base_svamp.jsonl")
    assert compare(greedy, checked)["n"] == 4
    for key, s in checked.items():
        if s.get("checked"):
            assert s["greedy_output"] == greedy[key]["output"]
        else:
            assert s["output"] == greedy[key]["output"]
    assert sum(bool(s.get("checked")) for s in checked.values()) == c["failed_check"]
    # greedy decoded once: the checked row started from the greedy row's own answers
    phases = ev["accounting"]["phases"]
    assert "eval_generate[base svamp]" in phases
    assert not any("checked@2 greedy" in k for k in phases)


@pytest.mark.parametrize("over,ok", [
    (["eval.checked_beams=0"], True),
    (["eval.checked_beams=4", "eval.tasks=[svamp]"], True),
    (["eval.checked_beams=1", "eval.tasks=[svamp]"], False),
    (["eval.checked_beams=4", "eval.tasks=[gsm8k]"], False),
    (["eval.checked_beams=4", "eval.tasks=[svamp]", "generation.calculator=true"], False),
])
def test_checked_beams_config_is_checked(over, ok):
    from spinlora.config import ConfigError, load_config

    if ok:
        load_config(None, over)
    else:
        with pytest.raises(ConfigError, match="eval.checked_beams"):
            load_config(None, over)
