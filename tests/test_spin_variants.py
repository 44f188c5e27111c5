"""SPIN loss variants against hand computations, their step-0 values on the tiny model,
correctness-aware pairs, opponent sampling apart from evaluation, keep_best / early stop."""
import json
import math
from pathlib import Path

import pytest
import torch

from spinlora.accounting import Accountant
from spinlora.config import ConfigError, load_config
from spinlora.generate import Generation
from spinlora.losses import LN2, spin_loss, step0_value

# one pair: log p(y) = -10, log p(y') = -12, reference -11 and -11.5, |y| = 5, |y'| = 4
P = dict(policy_real=torch.tensor([-10.0]), policy_gen=torch.tensor([-12.0]),
         ref_real=torch.tensor([-11.0]), ref_gen=torch.tensor([-11.5]),
         real_len=torch.tensor([5.0]), gen_len=torch.tensor([4.0]))
H = (-10 - -11) - (-12 - -11.5)  # 1.5


def test_sigmoid_nll_by_hand():
    loss, margin, pref = spin_loss(**P, beta=0.1, kind="sigmoid_nll", nll_weight=0.5)
    assert pref.item() == pytest.approx(math.log(1 + math.exp(-0.1 * H)), abs=1e-6)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.1 * H)) + 0.5 * 10 / 5, abs=1e-6)
    assert margin.item() == pytest.approx(0.15, abs=1e-6)


def test_whole_gold_answer_for_nll_and_dpop_penalty():
    """spin.pair_tokens=divergence: the preference sums part of y, the NLL term and DPOP's
    penalty the whole gold answer (whole_real / whole_ref)."""
    loss, _, pref = spin_loss(**P, beta=0.1, kind="sigmoid_nll", nll_weight=0.5,
                              whole_real=torch.tensor([-20.0]), whole_ref=torch.tensor([-21.0]))
    assert loss.item() == pytest.approx(pref.item() + 0.5 * 20 / 5, abs=1e-6)
    # whole gold answer 3 nats below its reference: the penalty is 3 though the part is above
    loss, _, _ = spin_loss(**P, beta=0.1, kind="dpop", dpop_lambda=5,
                           whole_real=torch.tensor([-24.0]), whole_ref=torch.tensor([-21.0]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.1 * (H - 5 * 3))), abs=1e-5)


def test_divergence_cut():
    from spinlora.stages.spin import Pair, cut_at_divergence, divergence

    assert divergence([5, 6, 7, 8], [5, 6, 9, 8]) == 3  # up to and including the first that differs
    assert divergence([5, 6], [5, 6, 7]) == 0  # a prefix: no token tells them apart
    pairs = [Pair([1], [5, 6, 7, 8], [5, 6, 9, 8, 2]), Pair([1], [5, 6], [5, 6, 7])]
    assert cut_at_divergence(pairs) == 3.0
    assert pairs[0].scored() == [[5, 6, 7, 8], [5, 6, 7], [5, 6, 9]]
    assert pairs[1].scored() == [[5, 6], [5, 6], [5, 6, 7]]  # whole answers
    assert Pair([1], [5], [6]).scored() == [[5], [6]]  # no cut: the two answers
    assert pairs[0].tokens() == 1 + 4 + 3 + 3 and Pair([1], [5], [6]).tokens() == 3  # accounting


def test_divergence_ignores_what_follows_the_choice(tiny_cfg):
    """With a cut, y' tokens after the first differing one do not change the preference part:
    the opponent's arithmetic after its (wrong) choice is not pushed down."""
    from spinlora.models import load_model
    from spinlora.stages.spin import Pair, cut_at_divergence, spin_objective

    model, tok = load_model(tiny_cfg.model)
    obj = spin_objective(tok.pad_token_id, 0.1, tiny_cfg.spin)
    a = Pair([3, 4, 5], [10, 11, 12, 13], [10, 20, 21, 22], ref_real=-9.0, ref_gen=-8.0)
    b = Pair([3, 4, 5], [10, 11, 12, 13], [10, 20, 30, 31], ref_real=-9.0, ref_gen=-8.0)
    with torch.no_grad():
        whole = [obj.loss(model, [p])[1]["pref_loss"].item() for p in (a, b)]
        cut_at_divergence([a, b])
        a.ref_whole = b.ref_whole = -9.0
        part = [obj.loss(model, [p])[1]["pref_loss"].item() for p in (a, b)]
    assert whole[0] != pytest.approx(whole[1], abs=1e-6)
    assert part[0] == pytest.approx(part[1], abs=1e-6)


def test_dpop_by_hand():
    # gold above the reference: no penalty, equals the sigmoid loss
    loss, _, _ = spin_loss(**P, beta=0.1, kind="dpop", dpop_lambda=50)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.15)), abs=1e-6)
    # gold 2 nats below the reference: -log σ(β·(h − λ·2)), with h = (-13+11) - (-12+11.5) = -1.5
    q = {**P, "policy_real": torch.tensor([-13.0])}
    loss, _, _ = spin_loss(**q, beta=0.1, kind="dpop", dpop_lambda=5)
    z = 0.1 * (-1.5 - 5 * 2)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-z)), abs=1e-5)


def test_ipo_by_hand():
    loss, _, _ = spin_loss(**P, beta=0.25, kind="ipo")
    h_avg = (-10 - -11) / 5 - (-12 - -11.5) / 4  # 0.2 + 0.125
    assert loss.item() == pytest.approx((h_avg - 1 / (2 * 0.25)) ** 2, abs=1e-6)


@pytest.mark.parametrize("kind", ["sigmoid", "sigmoid_nll", "dpop", "ipo"])
def test_step0_value_when_player_equals_reference(kind):
    x, y = torch.tensor([-30.0, -7.0]), torch.tensor([-25.0, -9.0])
    n = torch.tensor([10.0, 3.0])
    _, margin, pref = spin_loss(x, y, x.clone(), y.clone(), 0.1, kind, real_len=n, gen_len=n)
    assert torch.allclose(pref, torch.full_like(pref, step0_value(kind, 0.1)))
    assert torch.all(margin == 0)
    assert step0_value(kind, 0.1) == pytest.approx(25.0 if kind == "ipo" else LN2)


def test_unknown_loss_is_a_config_error():
    with pytest.raises(ConfigError, match="spin.loss"):
        load_config(None, ["spin.loss=hinge"])
    with pytest.raises(ConfigError, match="temperature"):
        load_config(None, ["spin.opponent.samples=4"])  # greedy samples are all the same
    with pytest.raises(ConfigError, match="pair_tokens"):
        load_config(None, ["spin.loss=ipo", "spin.pair_tokens=divergence"])
    with pytest.raises(ConfigError, match="keep_best"):
        load_config(None, ["spin.early_stop=true", "spin.keep_best=null"])


def test_is_correct():
    from spinlora.stages.spin import is_correct

    assert is_correct("so 3 + 4 = 7\n#### 7", "3+4=7\n#### 7") is True
    assert is_correct("The answer is 7.", "#### 7") is True
    assert is_correct("#### 8", "#### 7") is False
    assert is_correct("#### 8", "no number in the gold answer") is None
    assert is_correct("I have 7.", "Free-form answer mentioning 7 apples") is None  # no #### N
    # data.answer_check=equation: the value of the last equation written (SVAMP's score)
    wrong_sum = "458 + 692 = 1140\n#### 1140"
    assert is_correct(wrong_sum, "458 + 692 = 1150\n#### 1150") is False
    assert is_correct(wrong_sum, "458 + 692 = 1150\n#### 1150", "equation") is True
    assert is_correct("458 - 692 = 1150\n#### 1150", "#### 1150", "equation") is False
    assert is_correct("The answer is 7.", "#### 7", "equation") is True  # no equation: stated
    assert is_correct("#### 8", "no number", "equation") is None


def test_answer_check_auto_follows_the_rows(tiny_cfg):
    """auto: the equation check on SVAMP rows (they carry a gold value), final elsewhere; a
    value outside final / equation / auto is refused by name."""
    from spinlora.data import Example
    from spinlora.stages.spin import answer_check

    svamp_row = Example("q", "5 * 3 = 15\n#### 15", [1], [2], meta={"value": 15.0})
    gsm8k_row = Example("q", "work\n#### 15", [1], [2])
    tiny_cfg.data.answer_check = "auto"
    assert (answer_check(tiny_cfg, svamp_row), answer_check(tiny_cfg, gsm8k_row)) == (
        "equation", "final")
    tiny_cfg.data.answer_check = "final"
    assert answer_check(tiny_cfg, svamp_row) == "final"
    with pytest.raises(ConfigError, match="data.answer_check"):
        load_config(None, ["data.answer_check=value"])


def _fake_generate(texts_by_call):
    """generate() stand-in: answers in call order; records the config it was called with."""
    calls = []

    def gen(model, tok, prompts, cfg, stop_ids, desc="", **kw):
        calls.append(cfg)
        texts = texts_by_call[len(calls) - 1]
        outs = [Generation(tok(t, add_special_tokens=False).input_ids, t, True)
                for t in texts[:len(prompts)]]
        return outs, sum(len(o.ids) for o in outs)

    return gen, calls


def _checkable_prompts(cfg, n: int):
    """The tiny model, its chat format and n prompts whose gold answer is '#### i'."""
    from spinlora.data import ChatFormat, build_examples
    from spinlora.models import load_model

    model, tok = load_model(cfg.model)
    fmt = ChatFormat(tok)
    rows = [{"prompt": f"q{i}", "answer": f"work\n#### {i}"} for i in range(n)]
    return (model, tok, fmt, *build_examples(rows, fmt, cfg.data)[:1])


def test_correct_pairs_drop_and_sampled_opponent(tiny_cfg, monkeypatch):
    """drop: a pair whose chosen answer is right is dropped and counted; with k samples a wrong
    one is chosen when there is one; the opponent samples with its own settings and a seed per
    iteration, while evaluation's generation config stays greedy."""
    import spinlora.stages.spin as sp

    model, tok, fmt, examples = _checkable_prompts(tiny_cfg, 3)
    tiny_cfg.spin.correct_pairs = "drop"
    tiny_cfg.spin.opponent.temperature, tiny_cfg.spin.opponent.samples = 0.7, 2
    # prompt 0: both samples right -> dropped; prompt 1: second wrong -> chosen; 2: both wrong
    answers = ["#### 0", "#### 0", "#### 1", "#### 5", "#### 9", "#### 8"]
    gen, calls = _fake_generate([answers])
    monkeypatch.setattr(sp, "generate", gen)
    pairs, records, counts = sp.make_pairs(model, tok, fmt, examples, tiny_cfg,
                                           Accountant(torch.device("cpu")), "o", t=2)
    assert counts["dropped_correct"] == 1 and counts["pairs"] == 2 == len(pairs)
    assert counts["opponent_correct"] == 2 and counts["checkable"] == 3  # first samples: 0 and 1
    assert [r["generated"] for r in records] == ["#### 5", "#### 9"]
    assert all(r["correct"] is False for r in records)
    cfg = calls[0]
    assert cfg.do_sample and cfg.temperature == 0.7 and cfg.seed == 2000
    assert not tiny_cfg.generation.do_sample  # evaluation's settings untouched

    tiny_cfg.spin.correct_pairs = "keep"
    gen, _ = _fake_generate([answers])
    monkeypatch.setattr(sp, "generate", gen)
    pairs, records, counts = sp.make_pairs(model, tok, fmt, examples, tiny_cfg,
                                           Accountant(torch.device("cpu")), "o")
    assert counts["dropped_correct"] == 0 and len(pairs) == 3
    assert [r["generated"] for r in records] == ["#### 0", "#### 1", "#### 9"]


@pytest.mark.parametrize("kind,tokens", [("sigmoid_nll", "all"), ("dpop", "all"), ("ipo", "all"),
                                         ("sigmoid_nll", "divergence")])
def test_every_variant_runs_with_step0_check(tiny_cfg, kind, tokens):
    from spinlora.pipeline import run

    tiny_cfg.spin.loss, tiny_cfg.spin.iterations = kind, 1
    tiny_cfg.spin.pair_tokens = tokens
    tiny_cfg.stages = ["sft", "spin"]
    tiny_cfg.spin.beta = 0.5
    assert run(tiny_cfg)["status"] == "ok"
    r = json.loads((Path(tiny_cfg.output_dir) / "spin" / "iter_1" / "result.json").read_text())
    assert r["loss"] == kind and r["step0_ok"] and r["pair_tokens"] == tokens, r
    assert r["step0_pref_loss"] == pytest.approx(step0_value(kind, 0.5), rel=1e-4)
    if tokens == "divergence":
        assert r["generation"]["divergence_token_mean"] >= 1
    if kind == "sigmoid_nll":  # the NLL term makes the total larger than the preference part
        assert r["step0_loss"] > r["step0_pref_loss"] + 0.1


def test_keep_best_by_heldout_accuracy_and_early_stop():
    from spinlora.stages.spin import _metric, _pick_best

    h = [{"iteration": i, "heldout": {"accuracy": a}} for i, a in enumerate([0.30, 0.35, 0.35])]
    assert _pick_best(h, "heldout_accuracy") == 1  # ties go to the earlier iteration
    assert _metric(h[2], "heldout_accuracy") == 0.35
    assert _pick_best([{"iteration": 0, "heldout": {"accuracy": 0.4}},
                       {"iteration": 1, "heldout": {"accuracy": 0.3}}], "heldout_accuracy") == 0


def test_early_stop_ends_spin_when_heldout_falls(tiny_cfg, monkeypatch):
    import spinlora.stages.spin as sp
    from spinlora.pipeline import run

    scores = iter([0.5, 0.2, 0.9, 0.9])  # start, iteration 1 (falls), never reached

    def fake_heldout(*a, **k):
        return {"accuracy": next(scores), "gold_logp_per_token": -1.0}

    monkeypatch.setattr(sp, "_heldout", fake_heldout)
    tiny_cfg.stages = ["sft", "spin"]
    tiny_cfg.spin.iterations, tiny_cfg.spin.early_stop = 3, True
    tiny_cfg.spin.keep_best = "heldout_accuracy"
    run(tiny_cfg)
    res = json.loads((Path(tiny_cfg.output_dir) / "spin" / "result.json").read_text())
    assert res["stopped_early_after"] == 1 and res["best_iteration"] == 0
    assert not (Path(tiny_cfg.output_dir) / "spin" / "iter_2").exists()


def test_own_correct_pairs_right_over_wrong(tiny_cfg, monkeypatch):
    """spin.chosen=own_correct: the preferred answer is one of the model's own right samples
    (finished), the other a wrong one (finished first); prompts without both are counted."""
    import spinlora.stages.spin as sp

    model, tok, fmt, examples = _checkable_prompts(tiny_cfg, 4)
    tiny_cfg.spin.chosen = "own_correct"
    tiny_cfg.spin.opponent.temperature, tiny_cfg.spin.opponent.samples = 0.7, 3
    answers = ["a #### 7", "b #### 0", "c #### 0",  # prompt 0: right and wrong
               "#### 5", "#### 6", "#### 9",  # prompt 1: no right sample
               "x #### 2", "y #### 2", "z #### 2",  # prompt 2: no wrong sample
               "#### 4", "p #### 3", "q #### 3"]  # prompt 3: wrong first, right later
    gen, _ = _fake_generate([answers])
    monkeypatch.setattr(sp, "generate", gen)
    pairs, records, counts = sp.make_pairs(model, tok, fmt, examples, tiny_cfg,
                                           Accountant(torch.device("cpu")), "o")
    assert (counts["pairs"], counts["no_right_sample"], counts["no_wrong_sample"]) == (2, 1, 1)
    assert counts["samples_correct"] == 2 + 0 + 3 + 2
    assert [(r["chosen"], r["generated"]) for r in records] == [("b #### 0", "a #### 7"),
                                                                ("p #### 3", "#### 4")]
    ids = lambda t: tok(t, add_special_tokens=False).input_ids  # noqa: E731
    assert [(p.real_ids, p.gen_ids) for p in pairs] == [(ids("b #### 0"), ids("a #### 7")),
                                                        (ids("p #### 3"), ids("#### 4"))]
    # spin.drop_truncated: a wrong answer cut at max_new_tokens is not used
    cut = lambda t: Generation(tok(t, add_special_tokens=False).input_ids, t, False)  # noqa: E731
    monkeypatch.setattr(sp, "generate", lambda *a, **k: (
        [Generation(ids("r #### 0"), "r #### 0", True), cut("w #### 5"), cut("v #### 6")]
        + [cut("#### 1")] * 9, 0))
    tiny_cfg.spin.drop_truncated = True
    pairs, _, counts = sp.make_pairs(model, tok, fmt, examples, tiny_cfg,
                                     Accountant(torch.device("cpu")), "o")
    assert not pairs and counts["dropped_unfinished"] == 1
    with pytest.raises(ConfigError, match="own_correct needs"):
        load_config(None, ["spin.chosen=own_correct"])  # greedy: one answer per prompt


def test_own_correct_pairs_with_the_equation_check(tiny_cfg, monkeypatch):
    """data.answer_check=equation: an answer whose equation is right but whose sum is wrong
    counts as right; among right samples one whose stated number is right too is preferred.
    The final check reads the same samples the other way."""
    import spinlora.stages.spin as sp
    from spinlora.data import ChatFormat, build_examples
    from spinlora.models import load_model

    model, tok = load_model(tiny_cfg.model)
    fmt = ChatFormat(tok)
    examples = build_examples([{"prompt": "q", "answer": "3 + 4 = 7\n#### 7"}], fmt,
                              tiny_cfg.data)[0]
    tiny_cfg.spin.chosen = "own_correct"
    tiny_cfg.spin.opponent.temperature, tiny_cfg.spin.opponent.samples = 0.7, 3
    answers = ["3 + 4 = 8\n#### 8", "3 + 4 = 7\n#### 7", "3 * 4 = 12\n#### 12"]
    acct = Accountant(torch.device("cpu"))
    tiny_cfg.data.answer_check = "equation"
    monkeypatch.setattr(sp, "generate", _fake_generate([answers])[0])
    _, records, counts = sp.make_pairs(model, tok, fmt, examples, tiny_cfg, acct, "o")
    assert counts["samples_correct"] == 2
    assert [(r["chosen"], r["generated"]) for r in records] == [(answers[1], answers[2])]
    tiny_cfg.data.answer_check = "final"
    monkeypatch.setattr(sp, "generate", _fake_generate([answers])[0])
    _, records, counts = sp.make_pairs(model, tok, fmt, examples, tiny_cfg, acct, "o")
    assert counts["samples_correct"] == 1
    assert [(r["chosen"], r["generated"]) for r in records] == [(answers[1], answers[0])]


def test_own_correct_spin_runs_with_step0_check(tiny_cfg, monkeypatch):
    """The whole iteration on own pairs (the tiny model is never right: a stand-in check)."""
    import spinlora.stages.spin as sp
    from spinlora.pipeline import run

    monkeypatch.setattr(sp, "is_correct", lambda text, gold, check="final": len(text) % 2 == 0)
    real = sp.generate

    def ending(*a, **kw):  # the tiny model seldom ends a turn: end every answer with <|im_end|>
        gens, n = real(*a, **kw)
        end = a[1].convert_tokens_to_ids("<|im_end|>")
        return [Generation(g.ids if g.finished else g.ids + [end], g.text, True) for g in gens], n

    monkeypatch.setattr(sp, "generate", ending)
    tiny_cfg.stages, tiny_cfg.spin.iterations = ["sft", "spin"], 1
    tiny_cfg.spin.chosen, tiny_cfg.spin.loss = "own_correct", "sigmoid_nll"
    tiny_cfg.spin.opponent.temperature, tiny_cfg.spin.opponent.samples = 1.0, 4
    assert run(tiny_cfg)["status"] == "ok"
    r = json.loads((Path(tiny_cfg.output_dir) / "spin" / "iter_1" / "result.json").read_text())
    assert r["chosen"] == "own_correct" and r["step0_ok"] and r["new_pairs"] > 0, r
    recs = [json.loads(x) for x in open(Path(tiny_cfg.output_dir) / "spin" / "iter_1"
                                        / "generations.jsonl")]
    assert all(len(x["chosen"]) % 2 == 0 and len(x["generated"]) % 2 == 1 for x in recs)


def test_spin_trains_on_its_own_micro_batch(tiny_cfg, monkeypatch):
    """spin.micro_batch_size: SPIN's reference pass and training run that many pairs a pass,
    SFT keeps train.micro_batch_size; a value that does not divide train.batch_size is refused."""
    import spinlora.stages.spin as sp
    from spinlora.pipeline import run

    seen = {}
    real_ref, real_loop = sp.reference_pass, sp.train_loop

    def ref(model, pairs, pad, acct, micro, state=None):
        seen["reference"] = micro
        return real_ref(model, pairs, pad, acct, micro, state)

    def loop(model, items, objective, cfg, *a, **k):
        seen["train"] = cfg.micro_batch_size
        return real_loop(model, items, objective, cfg, *a, **k)

    monkeypatch.setattr(sp, "reference_pass", ref)
    monkeypatch.setattr(sp, "train_loop", loop)
    tiny_cfg.stages = ["sft", "spin"]
    tiny_cfg.spin.iterations, tiny_cfg.spin.micro_batch_size = 1, 1
    tiny_cfg.spin.correct_pairs = "keep"
    run(tiny_cfg)
    assert seen == {"reference": 1, "train": 1} and tiny_cfg.train.micro_batch_size == 4
    res = json.loads((Path(tiny_cfg.output_dir) / "spin" / "iter_1" / "result.json").read_text())
    assert res["step0_ok"]  # the reference pass and the first step share their micro-batches
    tiny_cfg.spin.micro_batch_size = 3
    with pytest.raises(ConfigError, match="spin.micro_batch_size"):
        tiny_cfg.validate()
