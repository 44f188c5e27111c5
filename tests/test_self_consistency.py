"""Self-consistency (``eval.self_consistency``): k sampled answers a problem, the value most of
them reach is the answer, pass@k beside it; a ``MODEL+maj@k`` row that pairs with greedy's."""
from __future__ import annotations

import json

import pytest
import torch


def _examples(tok, fmt):
    from spinlora.data import Example

    golds = [7.0, 3.0, 5.0, 2.0]
    return [Example(f"Problem {i}?", f"#### {v:g}", fmt.prompt_ids(f"Problem {i}?"), [1],
                    meta={"value": v, "index": i}) for i, v in enumerate(golds)]


# four samples per problem (gold values 7, 3, 5, 2)
SAMPLES = [
    # 1: two right equations of different form share one vote and beat two wrong ones
    "3 + 4 = 7\n#### 7", "14 / 2 = 7\n#### 7", "3 * 4 = 12\n#### 12", "4 - 3 = 1\n#### 1",
    # 2: the wrong value wins 3 to 1: majority wrong although pass@4 holds
    "6 - 3 = 3\n#### 3", "6 + 3 = 9\n#### 9", "3 + 6 = 9\n#### 9", "6 + 3 = 9\n#### 9",
    # 3: a tie goes to the value reached first (the wrong 4), the right 5 is second
    "9 - 5 = 4\n#### 4", "10 / 2 = 5\n#### 5", "1 + 4 = 5\n#### 5", "2 + 2 = 4\n#### 4",
    # 4: no sample states anything: no vote, wrong
    "I do not know.", "Hmm.", "No idea.", "Sorry.",
]


def _fake_generate(monkeypatch, g, texts):
    from spinlora.generate import Generation

    seen = {}

    def fake(model, tok, prompts, cfg, stop_ids, **kw):
        seen.update(n=len(prompts), do_sample=cfg.do_sample, temperature=cfg.temperature)
        return [Generation([5], t, True) for t in texts[:len(prompts)]], 3 * len(prompts)

    monkeypatch.setattr(g, "generate", fake)
    return seen


def test_majority_by_equation_value_ties_and_pass_at_k(tiny_model_dir, monkeypatch):
    import spinlora.evaluate.gsm8k as g
    from spinlora.accounting import Accountant
    from spinlora.config import GenerationConfig
    from spinlora.data import ChatFormat
    from spinlora.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    fmt = ChatFormat(tok)
    seen = _fake_generate(monkeypatch, g, SAMPLES)
    r = g.evaluate_self_consistency(None, tok, fmt, _examples(tok, fmt), GenerationConfig(),
                                    Accountant(torch.device("cpu")), "m+maj@4", 4, 0.7, "svamp")
    # every problem sampled 4 times, at the given temperature
    assert seen == {"n": 16, "do_sample": True, "temperature": 0.7}
    assert [s["correct"] for s in r["samples"]] == [True, False, False, False]
    assert [s["pass"] for s in r["samples"]] == [True, True, True, False]
    assert [s["sample_correct"] for s in r["samples"]] == [2, 1, 2, 0]
    assert r["samples"][0]["votes"] == {"7.0": 2, "12.0": 1, "1.0": 1}
    assert r["samples"][2]["output"] == "9 - 5 = 4\n#### 4"
    assert r["acc"] == 0.25 and r["pass_at_k"] == 0.75 and r["sample_acc"] == 5 / 16
    assert r["acc_stderr"] == pytest.approx((0.25 * 0.75 / 3) ** 0.5)
    assert [s["index"] for s in r["samples"]] == [0, 1, 2, 3] and r["generated_tokens"] == 48


def test_majority_on_gsm8k_final_answers(tiny_model_dir, monkeypatch):
    """GSM8K votes on the final answer's canonical text: "1,000" and "1000.00" are one vote."""
    import spinlora.evaluate.gsm8k as g
    from spinlora.accounting import Accountant
    from spinlora.config import GenerationConfig
    from spinlora.data import ChatFormat, Example
    from spinlora.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    fmt = ChatFormat(tok)
    ex = [Example("Q?", "#### 1000", fmt.prompt_ids("Q?"), [1])]
    _fake_generate(monkeypatch, g, ["#### 7", "so #### 1,000", "#### 1000.00"])
    r = g.evaluate_self_consistency(None, tok, fmt, ex, GenerationConfig(),
                                    Accountant(torch.device("cpu")), "m", 3, 0.5, "gsm8k")
    assert r["samples"][0]["votes"] == {"1000": 2, "7": 1} and r["acc"] == 1.0


def test_maj_row_in_the_evaluation_pairs_with_greedy(tiny_cfg, tmp_path):
    """``eval.self_consistency=3``: a ``base+maj@3`` row after ``base`` on GSM8K and SVAMP, its
    SVAMP samples file keyed like greedy's, each verdict the vote's over the saved sample
    values; a GSM8K prompting baseline's row (``base+cot``) scores GSM8K alone."""
    from spinlora import run, svamp
    from spinlora.paired import compare, read_samples

    from conftest import write_svamp

    root = write_svamp(tmp_path / "data")
    tiny_cfg.stages, tiny_cfg.eval.models = ["eval"], ["base"]
    tiny_cfg.eval.tasks, tiny_cfg.eval.data_root, tiny_cfg.eval.limit = ["gsm8k", "svamp"], str(root), 4
    tiny_cfg.eval.self_consistency = 3
    tiny_cfg.eval.prompting = ["standard", "cot"]
    tiny_cfg.generation.max_new_tokens = 12
    assert run(tiny_cfg)["status"] == "ok"
    ev_dir = tmp_path / "run" / "eval"
    ev = json.loads((ev_dir / "result.json").read_text())
    assert [r["label"] for r in ev["rows"]] == ["base", "base+cot", "base+maj@3"]
    assert [set(r["tasks"]) for r in ev["rows"]] == [{"gsm8k", "svamp"}, {"gsm8k"},
                                                     {"gsm8k", "svamp"}]
    assert ev["self_consistency"] == {"k": 3, "temperature": 0.7}
    g = ev["rows"][2]
    assert g["tasks"]["gsm8k"]["self_consistency"] == 3 and g["accuracy"] == g["tasks"]["gsm8k"]["acc"]
    assert (ev_dir / "samples_base+maj@3.jsonl").is_file()
    m = ev["rows"][2]["tasks"]["svamp"]
    assert m["n"] == 4 and m["self_consistency"] == 3 and 0 <= m["acc"] <= m["pass_at_k"] <= 1
    maj = read_samples(ev_dir / "samples_base+maj@3_svamp.jsonl")
    greedy = read_samples(ev_dir / "samples_base_svamp.jsonl")
    assert set(maj) == set(greedy) and compare(greedy, maj)["n"] == 4
    for s in maj.values():
        assert sum(s["votes"].values()) <= 3
        won = max(s["votes"], key=s["votes"].get) if s["votes"] else None
        right = won is not None and svamp.same(float(won), s["gold_value"])
        assert s["correct"] == right
    assert m["acc"] == sum(s["correct"] for s in maj.values()) / 4


@pytest.mark.parametrize("k,tasks,ok", [(0, ["svamp"], True), (1, ["svamp"], False),
                                        (4, ["mmlu"], False), (4, ["gsm8k"], True)])
def test_self_consistency_config_is_checked(k, tasks, ok):
    from spinlora.config import ConfigError, load_config

    over = [f"eval.self_consistency={k}", f"eval.tasks=[{','.join(tasks)}]"]
    if ok:
        assert load_config(None, over).eval.self_consistency == k
    else:
        with pytest.raises(ConfigError, match="eval.self_consistency"):
            load_config(None, over)


def test_verifier_pairs_from_sampled_training_answers(tmp_path, monkeypatch):
    """benchmarks/verifier_pairs.py: right and wrong by the equation's value (a right equation
    with a wrong stated sum is right), distinct texts, cut answers left out, at most
    --per-problem pairs, the gold answer where no sample is right, nothing where none is wrong."""
    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import verifier_pairs as vp

    def rec(q, gold, texts, finished=None):
        finished = finished or [True] * len(texts)
        return {"question": q, "gold": gold, "gold_answer": f"gold {q}",
                "samples": [{"text": t, "finished": f} for t, f in zip(texts, finished)]}

    records = [
        rec("a", "8", ["2 * 4 = 7\n#### 7", "4 + 5 = 9\n#### 9", "4 + 5 = 9\n#### 9",
                       "3 + 3 = 6\n#### 6", "4 + 4 = 8\n#### 8"]),
        rec("b", "8", ["1 + 1 = 2\n#### 2", "9 - 1 = 8\n#### 8"], finished=[False, True]),
        rec("c", "8", ["1 + 1 = 2\n#### 2"]),
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({**r, "correct": False}) + "\n" for r in records))
    out = tmp_path / "pairs.jsonl"
    res = vp.main([str(path), "--out", str(out), "--per-problem", "3"])
    pairs = [json.loads(x) for x in out.read_text().splitlines()]
    assert pairs == [
        {"prompt": "a", "chosen": "2 * 4 = 7\n#### 7", "rejected": "4 + 5 = 9\n#### 9"},
        {"prompt": "a", "chosen": "4 + 4 = 8\n#### 8", "rejected": "3 + 3 = 6\n#### 6"},
        {"prompt": "c", "chosen": "gold c", "rejected": "1 + 1 = 2\n#### 2"},
    ]
    assert res == {"problems": 3, "pairs": 3, "own_right": 2, "gold": 1, "no_wrong": 1,
                   "out": str(out)}
    # --rows: each problem's distinct right finished answers as SFT rows, no gold text copied in
    rows_out = tmp_path / "rows.jsonl"
    res = vp.main([str(path), "--out", str(rows_out), "--rows", "--per-problem", "3"])
    rows = [json.loads(x) for x in rows_out.read_text().splitlines()]
    assert rows == [{"question": "a", "answer": "2 * 4 = 7\n#### 7"},
                    {"question": "a", "answer": "4 + 4 = 8\n#### 8"},
                    {"question": "b", "answer": "9 - 1 = 8\n#### 8"}]
    assert (res["rows"], res["problems_with_a_right_answer"]) == (3, 2)
    vp.main([str(path), "--out", str(rows_out), "--rows", "--per-problem", "1"])
    assert len(rows_out.read_text().splitlines()) == 2
