"""SVAMP: the training and test files as chat rows, the equation-value score, the safe evaluator,
and ``eval.tasks: [svamp]`` through the pipeline on the tiny model."""
from __future__ import annotations

import csv
import json
import math
import re

import pytest

from conftest import SHARED, load_benchmark
from spinlora import svamp

SVAMP_DIR = SHARED / "svamp"
needs_data = pytest.mark.skipif(not (SVAMP_DIR / "SVAMP.json").is_file(),
                                reason="../shared/data/svamp not present")


@needs_data
def test_training_file_becomes_equations_over_real_numbers():
    """All 3138 rows read; every gold answer's equation evaluates to its own final number; the
    18 rows whose stated Answer differs from the equation are counted, not silently changed."""
    rows = svamp.read_train_csv(SVAMP_DIR / "mawps-asdiv-a_train.csv")
    assert len(rows) == 3138 and svamp.LOAD_STATS == {"rows": 3138, "answer_mismatch": 18}
    assert rows[0]["answer"] == "56 * 9 = 504\n#### 504"
    assert rows[0]["prompt"].startswith("Bryan took a look at his books as well. If Bryan has 56")
    for r in rows:
        assert not re.search(r"number\d", r["prompt"])  # every placeholder replaced
        assert svamp.score(r["answer"], r["value"])["correct"], r
        assert svamp.equation_value(r["answer"]) == pytest.approx(r["value"], rel=1e-4, abs=1e-4)
        final = r["answer"].split("#### ")[1]
        assert final == svamp.fmt_number(r["value"]) and not final.endswith(".0")


@needs_data
def test_test_file_is_the_1000_problems():
    rows = svamp.load_test(SHARED)
    assert len(rows) == 1000
    assert rows[0]["answer"] == "76 - 25 = 51\n#### 51" and rows[0]["value"] == 51.0
    raw = json.loads((SVAMP_DIR / "SVAMP.json").read_text())
    for r, x in zip(rows, raw):
        assert r["value"] == pytest.approx(x["Answer"], abs=1e-6) or r["answer_mismatch"]
        assert r["prompt"] == f"{x['Body'].strip()} {x['Question'].strip()}"


def test_render_keeps_only_needed_parentheses():
    cases = {"( 9.0 * ( 15.0 - 8.0 ) )": "9 * (15 - 8)", "( ( 19.0 - 11.0 ) / 2.0 )": "(19 - 11) / 2",
             "( 6.0 - ( 3.0 + 2.0 ) )": "6 - (3 + 2)", "( ( 6.0 - 3.0 ) + 2.0 )": "6 - 3 + 2",
             "( 8.0 / ( 4.0 / 2.0 ) )": "8 / (4 / 2)", "( 2.5 * 4.0 )": "2.5 * 4"}
    for infix, shown in cases.items():
        tree = svamp.parse_infix(infix)
        assert svamp._render(tree) == shown
        assert eval(shown) == pytest.approx(float(svamp._value(tree)))  # same value


def test_equation_value_and_stated_number():
    """The headline is the value of the equation written; the stated number is kept beside it."""
    s = svamp.score("180 / 18 = 1\n#### 1", 10)  # right operation, wrong arithmetic
    assert s["correct"] and not s["stated_correct"] and s["equation_value"] == 10
    s = svamp.score("(15 * 4) + 13 = 62\n#### 62", 255)
    assert not s["correct"] and s["equation_value"] == 73
    s = svamp.score("So 3 * 4 = 12 and then 12 - 2 = 10 apples.\n#### 10", 10)
    assert s["correct"] and s["stated_correct"]
    assert svamp.score("Total = 5 + 3 = 8", 8)["correct"]
    s = svamp.score("The answer is 12.", 12)  # no equation: the stated number counts
    assert s["correct"] and not s["has_equation"]
    assert svamp.score("56 × 9 = 504", 504)["correct"]
    assert svamp.score("1,000 + 24 = 1,024\n#### 1,024", 1024)["stated_correct"]
    assert not svamp.score("", 3)["correct"]


def test_safe_evaluator_refuses_everything_but_arithmetic():
    """Nothing but numbers, + - * / and parentheses is ever evaluated."""
    for text in ["__import__('os').system('true')", "2 ** 100000", "a + b", "(lambda: 1)()",
                 "[1, 2]", "9" * 300, "1 if 1 else 2"]:
        with pytest.raises(svamp.SvampError):
            svamp.parse_infix(text)
    assert svamp.equation_value("__import__('os') = 3") is None
    assert svamp.equation_value("2 ** 100000 = 3") is None
    assert svamp.equation_value("5 / 0 = 1") is None  # division by zero is no equation
    assert svamp.equation_value("(((((1 + 2 = 3") == 3


def test_malformed_training_rows_name_the_line(tmp_path):
    from spinlora.config import DataConfig
    from spinlora.data import DataError, load_rows

    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Question", "Numbers", "Equation", "Answer"])
        w.writerow(["Tim has number0 and number1 books. How many?", "3.0 4.0", "+ number0 number1", "7"])
        w.writerow(["Tim has number0 books.", "3.0", "+ number0 number1", "7"])
    with pytest.raises(DataError, match=r"train.csv:3: cannot read this SVAMP row"):
        load_rows(str(path), DataConfig(), "train")
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="SVAMP training columns"):
        load_rows(str(bad), DataConfig(), "train")


def test_svamp_eval_through_the_pipeline(tiny_cfg, tmp_path, capsys):
    """SFT on SVAMP-format training rows, then base and SFT scored on SVAMP problems: each row
    has the equation-value accuracy, the stated-number accuracy and per-problem samples."""
    from spinlora import run

    root = tmp_path / "data"
    (root / "svamp").mkdir(parents=True)
    # every other problem states a number its equation does not use (SVAMP's variation)
    problems = [{"ID": f"chal-{i}", "Body": f"Tom has {a} apples{' and 9 pears' * (i % 2)}. "
                 f"He buys {b} more.",
                 "Question": "How many apples does he have?", "Equation": f"( {a}.0 + {b}.0 )",
                 "Answer": float(a + b), "Type": "Addition"} for i, (a, b) in
                enumerate(zip(range(1, 7), range(3, 9)))]
    (root / "svamp" / "SVAMP.json").write_text(json.dumps(problems))
    train = tmp_path / "train.csv"
    with open(train, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Question", "Numbers", "Equation", "Answer"])
        for a in range(1, 13):
            w.writerow([f"Tom has number0 apples. He buys number1 more. How many apples does he "
                        "have?", f"{a}.0 {a + 2}.0", "+ number0 number1", f"{2 * a + 2}.0"])
    for o in (f"data.train={train}", f"eval.data_root={root}", "eval.tasks=[svamp]",
              "stages=[sft,eval]", "eval.models=[base,sft]", "eval.limit=4",
              "generation.max_new_tokens=16"):
        k, v = o.split("=", 1)
        section, _, key = k.rpartition(".")
        import yaml

        setattr(getattr(tiny_cfg, section) if section else tiny_cfg, key, yaml.safe_load(v))
    summary = run(tiny_cfg)
    assert summary["status"] == "ok"
    printed = capsys.readouterr().out.splitlines()
    out = tmp_path / "run"
    # the run ends with its tables: every model's scores, then base paired against SFT
    head = printed.index("Paired differences against run / lora_sft")
    assert any(line.startswith("| run | model | svamp") for line in printed[head - 5:head])
    assert any(line.startswith("| run | lora_sft | ") for line in printed[head - 5:head])
    from spinlora.paired import compare, read_samples

    sft = read_samples(out / "eval" / "samples_lora_sft_svamp.jsonl")
    base = read_samples(out / "eval" / "samples_base_svamp.jsonl")
    cells = []  # all problems, then those with an irrelevant number, then the rest
    for part in (None, True, False):
        pick = lambda rows: {k: x for k, x in rows.items()  # noqa: E731
                             if part is None or x["irrelevant_numbers"] is part}
        c = compare(pick(sft), pick(base))
        cells.append(f"{100 * c['delta']:+.1f} ± {100 * c['delta_se']:.1f} "
                     f"(+{c['gained']} / −{c['lost']}, {c['n']})")
    assert printed[head + 1:] == [
        "| run | model | svamp | svamp: irrelevant numbers | svamp: the rest |",
        "|---|---|---|---|---|", "| run | base | " + " | ".join(cells) + " |"]
    ev = json.loads((out / "eval" / "result.json").read_text())
    for row in ev["rows"]:
        s = row["tasks"]["svamp"]
        assert s["n"] == 4 and 0 <= s["acc"] <= 1 and 0 <= s["stated_acc"] <= 1
        assert math.isclose(s["acc_stderr"], math.sqrt(s["acc"] * (1 - s["acc"]) / 3))
        samples = [json.loads(x) for x in
                   (out / "eval" / f"samples_{row['label']}_svamp.jsonl").read_text().splitlines()]
        assert len(samples) == 4 and {"correct", "stated_correct", "index"} <= set(samples[0])
        assert sum(x["correct"] for x in samples) / 4 == s["acc"]
        for x in samples:  # each verdict is the scorer's on the saved output
            assert x["correct"] == svamp.score(x["output"], x["gold_value"])["correct"]
            assert x["irrelevant_numbers"] == ("pears" in x["question"])
        for name, flag in (("irrelevant", True), ("relevant", False)):
            part = [x["correct"] for x in samples if ("pears" in x["question"]) is flag]
            assert s["by_numbers"][name]["n"] == len(part)
            assert s["by_numbers"][name]["acc"] == sum(part) / max(len(part), 1)
        assert 0 < s["by_numbers"]["irrelevant"]["n"] < 4  # the seeded 4 of 6 hold both kinds
    assert "svamp" in (out / "summary.md").read_text()


def test_study_paired_difference_is_hand_computed():
    """benchmarks/svamp_study.py: the paired difference and its standard error over the same
    problems, only where both models answered."""
    study = load_benchmark("svamp_study")
    a = {i: {"correct": c} for i, c in enumerate([1, 1, 0, 1, 0])}
    b = {i: {"correct": c} for i, c in enumerate([1, 0, 0, 0, 1])}
    b[7] = {"correct": 1}  # a problem only one model answered: not paired
    mean, se, n = study.paired(a, b)
    d = [0, 1, 0, 1, -1]
    var = sum((x - 0.2) ** 2 for x in d) / 4
    assert n == 5 and mean == pytest.approx(0.2) and se == pytest.approx(math.sqrt(var / 5))


def test_study_seeds_aggregate_each_replicate_against_its_own_sft(tmp_path):
    """svamp_study.py --seeds: a model's row gives mean and sample sd over the replicates of its
    accuracy and of its paired difference from its own replicate's SFT, and the seed-level SE
    sd / sqrt(k); a model one replicate lacks gets no row; the replicates' methods start from
    their own SFT adapter."""
    study = load_benchmark("svamp_study")

    def row(model, method, acc, delta, it=0):
        return {"model": model, "method": method, "iteration": it, "accuracy": acc, "n": 1000,
                "delta_vs_sft": delta, "delta_vs_sft_se": 0.01}

    per_seed = {
        0: [row("lora_sft", "sft", 0.30, 0.0), row("irpo_iter_1", "irpo", 0.31, 0.01, 1),
            row("base", "base", 0.07, -0.23), row("grpo", "grpo", 0.32, 0.02, 4)],
        1: [row("lora_sft", "sft", 0.28, 0.0), row("irpo_iter_1", "irpo", 0.29, 0.01, 1),
            row("grpo", "grpo", 0.27, -0.01, 4)],
        2: [row("lora_sft", "sft", 0.27, 0.0), row("irpo_iter_1", "irpo", 0.25, -0.02, 1),
            row("grpo", "grpo", 0.30, 0.03, 4)],
    }
    agg = {r["model"]: r for r in study.across_seeds(per_seed)}
    assert list(agg) == ["sft", "irpo_iter_1", "grpo"]  # base: only the study has it
    irpo = agg["irpo_iter_1"]
    deltas = [0.01, 0.01, -0.02]
    sd = math.sqrt(sum((d - 0.0) ** 2 for d in deltas) / 2)
    assert irpo["delta_vs_sft_mean"] == pytest.approx(0.0, abs=1e-12)
    assert irpo["delta_vs_sft_sd"] == pytest.approx(sd)
    assert irpo["delta_seed_se"] == pytest.approx(sd / math.sqrt(3))
    assert irpo["delta_ci95"] == pytest.approx([-4.303 * sd / math.sqrt(3),
                                                4.303 * sd / math.sqrt(3)])
    assert agg["sft"]["accuracy_mean"] == pytest.approx(0.85 / 3)
    assert agg["sft"]["accuracy_sd"] == pytest.approx(math.sqrt(
        sum((a - 0.85 / 3) ** 2 for a in (0.30, 0.28, 0.27)) / 2))
    assert [p["seed"] for p in agg["grpo"]["per_seed"]] == [0, 1, 2]
    later = study.across_seeds({2: per_seed[2], 0: per_seed[0]})  # the study's own seed first
    assert later[0]["seeds"] == [2, 0]
    table = study.seeds_table(list(agg.values()))
    assert "+0.0 ± 1.0 | -4.3 to +4.3" in table and "30.0 / 28.0 / 27.0" in table
    for name in ("spin", "irpo", "grpo"):
        cmd = study.SEED_POINTS[name]
        assert cmd[cmd.index("--adapter") + 1] == "{out}/sft/sft/adapter"
    assert study.POINTS["irpo"][4:] == study.SEED_POINTS["irpo"][4:]  # the study's own settings
    (tmp_path / "main").mkdir()
    with pytest.raises(SystemExit, match="missing"):
        study._study_seed(tmp_path / "nowhere")
    (tmp_path / "main" / "config.yaml").write_text("seed: 3\n")
    assert study._study_seed(tmp_path / "main") == 3


def test_seed_splits_average_each_replicate_on_one_part(tmp_path, monkeypatch, capsys):
    """benchmarks/svamp_seed_splits.py: on the problems of a --subset only, each model's paired
    difference from its own replicate's SFT (the study's folders for the first seed, seedS/ for
    the others), one value per seed."""
    import gzip

    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import svamp_seed_splits as splits

    test = svamp.load_test(SHARED)
    irrelevant = [i for i in range(12) if svamp.irrelevant_numbers(test[i]["prompt"],
                                                                   test[i]["answer"])]
    assert 0 < len(irrelevant) < 12  # the first 12 problems hold both kinds

    def write(path, correct):
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt") as f:
            for i, c in enumerate(correct):
                f.write(json.dumps({"index": i, "correct": c}) + "\n")

    sft = {0: [i % 2 for i in range(12)], 5: [0] * 12}
    model = {0: [1] * 12, 5: [i % 3 == 0 for i in range(12)]}
    for seed, base, sft_dir, points in ((0, tmp_path / "points", "main", ("main", "irpo", "grpo")),
                                        (5, tmp_path / "points" / "seed5", "sft",
                                         ("spin", "irpo", "grpo"))):
        write(base / sft_dir / "eval" / "samples_lora_sft_svamp.jsonl.gz", sft[seed])
        for point in points:
            for label in ("lora_spin_iter_1", "lora_spin_iter_2", "lora_rl"):
                write(base / point / "eval" / f"samples_{label}_svamp.jsonl.gz", model[seed])
    (tmp_path / "summary_seeds.json").write_text(json.dumps([{"seeds": [0, 5]}]))
    out = splits.main([str(tmp_path), "--subset", "irrelevant",
                       "--data-root", str(SHARED)])
    want = [sum(int(model[s][i]) - sft[s][i] for i in irrelevant) / len(irrelevant)
            for s in (0, 5)]
    assert set(out["irrelevant"]) == set(splits.MODELS)
    for deltas in out["irrelevant"].values():
        assert deltas == pytest.approx(want)
    assert "irrelevant (" in capsys.readouterr().out
    (tmp_path / "summary_seeds.json").unlink()
    with pytest.raises(SystemExit, match="missing"):
        splits.main([str(tmp_path)])


def test_paired_cli_reads_samples_files_gzipped_or_not(tmp_path, capsys):
    """benchmarks/paired.py: problems matched by index (order and gzip do not matter), gained and
    lost counted, a file that is not an eval samples file refused with its line."""
    import gzip

    cli = load_benchmark("paired")
    ref, other = tmp_path / "sft.jsonl", tmp_path / "spin.jsonl.gz"
    ref.write_text("".join(json.dumps({"index": i, "correct": c}) + "\n"
                           for i, c in enumerate([1, 1, 0, 1, 0])))
    with gzip.open(other, "wt") as f:  # reversed order, one extra problem
        for i, c in reversed(list(enumerate([1, 0, 0, 0, 1, 1]))):
            f.write(json.dumps({"index": i, "correct": c}) + "\n")
    (row,) = cli.main([str(ref), str(other), "--json"])
    assert (row["n"], row["gained"], row["lost"]) == (5, 1, 2)
    assert row["delta"] == pytest.approx(-0.2) and row["accuracy"] == pytest.approx(0.4)
    assert json.loads(capsys.readouterr().out)[0]["delta_se"] == pytest.approx(row["delta_se"])
    assert row["same_text"] is None  # no answers in these files: nothing to compare word for word
    from spinlora.paired import differences, read_samples

    d = differences(read_samples(other), read_samples(ref))  # the per-problem terms of delta
    assert d == {0: 0, 1: -1, 2: 0, 3: -1, 4: 1}  # index 5 is in one file only
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"index": i, "correct": c, "output": o}) + "\n"
                             for i, (c, o) in enumerate([(1, "3"), (0, "x"), (1, "5")])))
    again = tmp_path / "again.jsonl"
    again.write_text("".join(json.dumps({"index": i, "correct": c, "output": o}) + "\n"
                             for i, (c, o) in enumerate([(1, "3"), (0, "y"), (1, "5")])))
    (row2,) = cli.main([str(texts), str(again)])
    assert row2["same_text"] == 2 and row2["delta"] == 0
    assert "2 answers the same text" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"index": 0, "correct": 1}\n{"question": "x"}\n')
    with pytest.raises(SystemExit, match="line 2"):
        cli.main([str(ref), str(bad)])
    elsewhere = tmp_path / "other_problems.jsonl"
    elsewhere.write_text('{"index": 99, "correct": 1}\n')
    with pytest.raises(SystemExit, match="share no problem"):
        cli.main([str(ref), str(elsewhere)])


def test_number_verdict_sorts_an_answer_by_the_numbers_it_uses():
    """benchmarks/svamp_forms.py --numbers: right first, then no equation, a number the problem
    does not state, one it states and the gold does not use, fewer numbers than the gold, and
    the gold's numbers combined wrong; numbers compared as values (1,200 is 1200)."""
    forms = load_benchmark("svamp_forms")
    problem, gold = "Paul got 1,200 crayons and 406 erasers. He lost 20 crayons. How many?", "1200 - 20"
    verdict = lambda out, ok=False: forms.number_verdict(  # noqa: E731
        {"correct": ok, "output": out}, problem, gold)
    assert verdict("1200 - 20 = 1180\n#### 1180", ok=True) == "right"
    assert verdict("#### 1180") == "no equation"
    assert verdict("1200 - 30 = 1170") == "a number not in the problem"
    assert verdict("1,200 - 406 = 794") == "an irrelevant number"
    assert verdict("1200 - 1 * 1200 = 0") == "a number not in the problem"
    assert verdict("1200 * 1200 = 1440000") == "fewer numbers than the gold"
    assert verdict("1200 + 20 = 1220") == "the gold's numbers, combined wrong"


def test_pair_direction_counts_the_problems_numbers_each_answer_uses():
    """benchmarks/svamp_forms.py --pairs: a pair is ``fewer`` when the preferred answer's
    equation uses fewer of the problem's numbers than the rejected one's, ``more`` when more;
    numbers the problem does not state and a missing equation count for nothing."""
    forms = load_benchmark("svamp_forms")
    problem = "Jazmin had 1209 dolls and Geraldine had 3744 onions and 2186 dolls. How many dolls?"
    pair = lambda chosen, rejected: forms.pair_direction(  # noqa: E731
        {"prompt": problem, "chosen": chosen, "generated": rejected})
    assert pair("1209 + 2186 = 3395\n#### 3395", "1209 + 3744 + 2186 = 7139") == "fewer"
    assert pair("1209 + 3744 + 2186 = 7139", "1209 + 2186 = 3395") == "more"
    assert pair("1209 + 2186 = 3395", "1209 + 3744 = 4953") == "as many"
    assert pair("1209 + 2186 = 3395", "1209 * 2 = 2418") == "more"
    assert pair("#### 3395", "1209 + 2186 = 3395") == "fewer"


def test_label_case_reads_the_answers_first_line_against_the_question():
    """benchmarks/svamp_labels.py: the label before ":" on the first line matches the question's
    asked object, names another, is missing, or none was expected; a re-read prompt is read
    once."""
    from spinlora.data import READ_AGAIN

    labels = load_benchmark("svamp_labels")
    q = "Paco had 26 salty cookies and 17 sweet cookies. How many salty cookies did Paco have left?"
    assert labels.label_case(q + READ_AGAIN + q, "salty cookies: 26 - 9 = 17\n#### 17") == "matches"
    assert labels.label_case(q, "salary: 26 + 17 - 9 = 34\n#### 34") == "another"
    assert labels.label_case(q, "26 - 9 = 17\n#### 17") == "missing"
    assert labels.label_case("He had 5. What is the total?", "total: 5 + 1 = 6") == "none expected"


def test_svamp_halves_partition_the_test_set_and_restrict_a_comparison(tmp_path, capsys):
    """benchmarks/svamp_folds.py: two seeded halves of SVAMP.json that partition its 1000
    problems, each read by data.train as SVAMP rows; paired.py --problems pairs two samples
    files on one half only (by ID), and with --subset on both restrictions at once."""
    from spinlora.config import DataConfig
    from spinlora.data import load_rows

    folds, cli = load_benchmark("svamp_folds"), load_benchmark("paired")
    a, b = folds.main(["--out", str(tmp_path / "f"), "--data-root", str(SHARED)])
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    ids = [r["ID"] for r in json.loads((SVAMP_DIR / "SVAMP.json").read_text())]
    assert len(ra) == len(rb) == 500 and sorted(r["ID"] for r in ra + rb) == sorted(ids)
    assert folds.main(["--out", str(tmp_path / "g"), "--data-root", str(SHARED)])[0] \
        .read_text() == a.read_text()  # seeded: the same halves again
    rows = load_rows(str(a), DataConfig(), "train")
    assert len(rows) == 500 and rows[0]["answer"].endswith(f"#### {rows[0]['answer'].split()[-1]}")
    # two samples files over all 1000: the other model is right exactly on half b's problems
    in_b = {int(r["ID"].split("-")[1]) - 1 for r in rb}
    ref, other = tmp_path / "ref.jsonl", tmp_path / "other.jsonl"
    ref.write_text("".join(json.dumps({"index": i, "correct": 0}) + "\n" for i in range(1000)))
    other.write_text("".join(json.dumps({"index": i, "correct": int(i in in_b)}) + "\n"
                             for i in range(1000)))
    root = ["--data-root", str(SHARED), "--json"]
    (on_a,) = cli.main([str(ref), str(other), "--problems", str(a), *root])
    (on_b,) = cli.main([str(ref), str(other), "--problems", str(b), *root])
    assert (on_a["n"], on_a["delta"], on_b["n"], on_b["delta"]) == (500, 0.0, 500, 1.0)
    (both,) = cli.main([str(ref), str(other), "--problems", str(b), "--subset", "irrelevant",
                        *root])
    irrelevant = sum(svamp.irrelevant_numbers(r["prompt"], r["answer"])
                     for r in load_rows(str(b), DataConfig(), "train"))
    assert both["n"] == irrelevant and 0 < irrelevant < 500
    # --cross: a run "trained on a" right exactly on half b, one "trained on b" right nowhere:
    # unseen takes half b's answers from the first (all right) and half a's from the second
    res = folds.main(["--out", str(tmp_path / "f"), "--data-root", str(SHARED),
                      "--cross", str(ref), str(other), str(ref)])
    assert (res["unseen"]["n"], res["unseen"]["delta"]) == (1000, 0.5)
    assert (res["trained"]["n"], res["trained"]["delta"]) == (1000, 0.0)
    assert res["unseen, with a sibling"]["n"] + res["unseen, without"]["n"] == 1000
    near = folds.siblings({"a": [{"ID": "1", "Body": "Tom has 5 red apples ."}],
                           "b": [{"ID": "2", "Body": "Tom has 7 red apples ."},
                                 {"ID": "3", "Body": "A ship sails 40 miles ."}]})
    assert near == {"1", "2"}  # 4 of 6 words shared; the ship shares none
    with pytest.raises(SystemExit, match="no such file"):
        folds.main(["--out", str(tmp_path / "f"), "--data-root", str(SHARED),
                    "--cross", str(ref), str(other), str(tmp_path / "missing.jsonl")])
    capsys.readouterr()
    (tmp_path / "bad.json").write_text(json.dumps([{"ID": "chal-5000"}]))
    with pytest.raises(SystemExit, match="not in"):
        cli.main([str(ref), str(other), "--problems", str(tmp_path / "bad.json"), *root])


def test_samples_keyed_by_question_keep_a_question_asked_twice(tmp_path):
    """GSM8K-style samples files have no index and are keyed by the question's text: a question
    that occurs twice (22 of 1000 MAWPS / ASDiv-A training rows do) stays two problems, and the
    k-th occurrence in one file pairs with the k-th in the other."""
    from spinlora.paired import compare, read_samples

    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"question": q, "correct": c}) + "\n"
                                for q, c in rows))
        return path

    a = read_samples(write("a.jsonl", [("Q1", 1), ("Q2", 0), ("Q1", 0)]))
    b = read_samples(write("b.jsonl", [("Q1", 1), ("Q2", 0), ("Q1", 1)]))
    assert len(a) == len(b) == 3
    row = compare(a, b)
    assert (row["n"], row["gained"], row["lost"]) == (3, 1, 0)


def test_calculator_computes_the_expression_before_equals():
    """generation.calculator's arithmetic: the expression that ends the line, numbers written as
    the gold answers write them; nothing for a line without an operator or a division by zero."""
    assert svamp.calculate("56 * 9 =") == "504"
    assert svamp.calculate("He buys (15 * 4) + 13 =") == "73"
    assert svamp.calculate("First 3 + 4 = 7\n458 + 692 =") == "1150"  # the current line only
    assert svamp.calculate("<<48/2=") == "24"  # GSM8K's calculator notes
    assert svamp.calculate("10 / 4 =") == "2.5" and svamp.calculate("7 - 9 =") == "-2"
    for text in ["x =", "5 + 3 = 8 =", "5 / 0 =", "56 * 9", "__import__('os') + 1 ="]:
        assert svamp.calculate(text) is None, text


def test_distractors_add_an_irrelevant_sentence_and_keep_the_gold():
    """data.distractors: the share asked for gets one statement with one number from another
    training row, before its question; gold answers, questions and row count stay; the same
    seed gives the same rows; a statement opening with a pronoun or naming the problem's own
    people is never used."""
    from spinlora.data import _names, add_distractors

    rows = svamp.read_train_csv(SVAMP_DIR / "mawps-asdiv-a_train.csv")
    out, n = add_distractors(rows[:600], rows, 0.5, 0)
    assert len(out) == 600 and 240 <= n <= 330
    assert add_distractors(rows[:600], rows, 0.5, 0) == (out, n)
    assert add_distractors(rows[:600], rows, 0.0, 0) == (rows[:600], 0)
    changed = [(a, b) for a, b in zip(rows[:600], out) if a is not b]
    assert len(changed) == n
    for a, b in changed:
        d = b["distractor"]
        assert (b["answer"], b["value"]) == (a["answer"], a["value"])
        assert b["prompt"].replace(d + " ", "", 1) == a["prompt"]  # only the sentence was added
        assert b["prompt"].rstrip().endswith(a["prompt"].rstrip().split(". ")[-1])  # question last
        assert len(re.findall(r"\d[\d,]*(?:\.\d+)?", d)) == 1
        assert d.split()[0].lower() not in ("he", "she", "they", "it", "i", "we")
        assert not _names(a["prompt"]) & _names(d)
        assert d not in a["prompt"]


def test_conjoin_adds_a_second_object_the_question_does_not_ask_about():
    """data.conjoin: a changed row is its own text with " and M nouns" after a counted noun its
    question names; the noun is none of the problem's words and counts things (no measure), M is
    new to the problem; gold, question and row count stay; a row with a number that names
    nothing is left alone; the changed rows state one number more, one their equation does not
    use (svamp.irrelevant_numbers, SVAMP's 447)."""
    from spinlora.data import _MEASURES, _bare_number, _sentences, conjoin_objects

    rows = svamp.read_train_csv(SVAMP_DIR / "mawps-asdiv-a_train.csv")
    out, n = conjoin_objects(rows, rows, 1.0, 2)
    assert len(out) == len(rows) and 300 <= n <= 600  # only rows with an asked, counted noun
    assert conjoin_objects(rows, rows, 1.0, 2) == (out, n)
    assert conjoin_objects(rows, rows, 0.0, 2) == (rows, 0)
    changed = [(a, b) for a, b in zip(rows, out) if a is not b]
    assert len(changed) == n
    for a, b in changed:
        added = b["conjoined"]
        number, noun = re.fullmatch(r" and (\d+) ([a-z]+)", added).groups()
        assert (b["answer"], b["value"]) == (a["answer"], a["value"])
        assert b["prompt"].replace(added, "", 1) == a["prompt"]  # only the words were added
        before = b["prompt"][:b["prompt"].index(added)]
        counted = re.search(r"([a-z]+)$", before).group(1)  # the noun it stands beside
        assert counted in _sentences(a["prompt"])[-1].lower()  # ... is one the question asks about
        assert noun not in re.findall(r"[a-z]+", a["prompt"].lower()) and noun not in _MEASURES
        assert number not in re.findall(r"\d+", a["prompt"])
        assert _sentences(b["prompt"])[-1] == _sentences(a["prompt"])[-1]
        assert not _bare_number(a["prompt"].lower())
        assert len(svamp.NUMBER.findall(b["prompt"])) == len(svamp.NUMBER.findall(a["prompt"])) + 1
    # all but the few whose equation uses a number the text never states ("49 / 7": a week)
    assert sum(svamp.irrelevant_numbers(b["prompt"], b["answer"]) for _, b in changed) >= 0.95 * n
    assert _bare_number("kenneth has 3 marbles. he buys 6 more.")
    assert not _bare_number("she sold games for $ 4 each. she has 3 marbles.")
    half, m = conjoin_objects(rows, rows, 0.5, 2)
    assert 0.35 * n <= m <= 0.65 * n
    # data.conjoin_before: about half the objects go before the asked one, the same rows change
    # and lose nothing else; at 0 the rows are those above, draw for draw
    assert conjoin_objects(rows, rows, 1.0, 2, 0.0) == (out, n)
    both, k = conjoin_objects(rows, rows, 1.0, 2, 0.5)
    assert k == n and [a is b for a, b in zip(rows, both)] == [a is b for a, b in zip(rows, out)]
    ahead = [(a, b) for a, b in zip(rows, both) if a is not b and b["conjoined"].endswith(" and ")]
    assert 0.4 * n <= len(ahead) <= 0.6 * n
    for a, b in ahead:
        number, noun = re.fullmatch(r"(\d+) ([a-z]+) and ", b["conjoined"]).groups()
        assert b["prompt"].replace(b["conjoined"], "", 1) == a["prompt"]
        after = b["prompt"][b["prompt"].index(b["conjoined"]) + len(b["conjoined"]):]
        counted = re.match(r"\d[\d,]*(?:\.\d+)? ([a-z]+)", after).group(1)  # the asked object
        assert counted in _sentences(a["prompt"])[-1].lower()
        assert number not in re.findall(r"\d+", a["prompt"])


def test_conjoin_every_puts_the_object_beside_every_count_of_the_asked_noun():
    """data.conjoin_every: the added noun stands beside every count of one asked noun in the
    statements, each with its own new number, all on one side; taking the added words out gives
    the original text (with a bare "N more" named where the problem counts one kind of thing);
    gold and question stay; a problem counting two kinds keeps its bare number and stays."""
    from spinlora.data import _COUNTED, _COUNTED_MORE, _MEASURES, _name_more, _sentences, conjoin_objects

    rows = svamp.read_train_csv(SVAMP_DIR / "mawps-asdiv-a_train.csv")
    out, n = conjoin_objects(rows, rows, 1.0, 2, 0.5, every=True)
    assert conjoin_objects(rows, rows, 1.0, 2, 0.5, every=True) == (out, n)
    changed = [(a, b) for a, b in zip(rows, out) if a is not b]
    assert len(changed) == n and 400 <= n <= 650
    several = 0
    for a, b in changed:
        added = b["conjoined"].split(" | ")
        several += len(added) > 1
        sides = {w.endswith(" and ") for w in added}
        assert len(sides) == 1  # one side for the whole row
        pattern = r"(\d+) (more )?([a-z]+) and " if sides == {True} else r" and (\d+) (more )?([a-z]+)"
        found = [re.fullmatch(pattern, w).groups() for w in added]
        numbers = [f[0] for f in found]
        assert len(set(numbers)) == len(numbers)
        assert not set(numbers) & set(re.findall(r"\d+", a["prompt"]))
        noun = {f[2] for f in found}
        assert len(noun) == 1 and noun.pop() not in re.findall(r"[a-z]+", a["prompt"].lower())
        text = b["prompt"]
        for w in added:
            text = text.replace(w, "", 1)
        kinds = {m.group(2) for m in _COUNTED.finditer(a["prompt"].lower())} - _MEASURES
        named = _name_more(a["prompt"], next(iter(kinds))) if len(kinds) == 1 else a["prompt"]
        assert text == " ".join(_sentences(named))  # only the words were added
        assert (b["answer"], b["value"]) == (a["answer"], a["value"])
        assert _sentences(b["prompt"])[-1] == _sentences(named)[-1]  # no object in the question
        # the noun the first object stands beside, and every count of it got one
        first = b["prompt"].index(added[0])
        if sides == {True}:
            beside = re.match(r"\d[\d,.]* (?:more )?([a-z]+)", b["prompt"][first + len(added[0]):])
        else:
            beside = re.search(r"([a-z]+)$", b["prompt"][:first])
        target = beside.group(1)
        assert target in _sentences(a["prompt"])[-1].lower()
        counts = [m for s in _sentences(text)[:-1] for m in _COUNTED_MORE.finditer(s)
                  if m.group(3) == target]
        assert len(counts) == len(added)
    assert several >= 100  # parallel objects in a good share of the rows
    assert _name_more("Sean has 9 apples. Susan gives Sean 8 more. He finds another 4.", "apples") \
        == "Sean has 9 apples. Susan gives Sean 8 more apples. He finds another 4 apples."
    assert _name_more("Tom has 12 more than Amy.", "cards") == "Tom has 12 more cards than Amy."
    assert _name_more("He buys 8 more apples.", "apples") == "He buys 8 more apples."
    sean = [{"prompt": "Sean has 9 apples. Susan gives Sean 8 more. How many apples does Sean "
                       "have?", "answer": "9 + 8 = 17\n#### 17", "value": 17.0}]
    [got], k = conjoin_objects(sean, rows, 1.0, 0, every=True)
    assert k == 1 and "8 more apples" in got["prompt"]
    assert got["prompt"].count(" and ") == 2  # beside both counts of apples
    two_kinds = [{"prompt": "Emily collects 63 cards. Emily's father gives Emily 7 more. Bruce has "
                            "13 apples. How many cards does Emily have?", "answer": "63 + 7 = 70"
                            "\n#### 70", "value": 70.0}]
    assert conjoin_objects(two_kinds, rows, 1.0, 0, every=True) == (two_kinds, 0)


def _conjoined_training_rows(option: str, mark: str):
    """The training file through conjoin_every with ``option`` (ask / both) at 0.5: at 0 the
    rows are conjoin_every's, draw for draw, and at 0.5 as many rows change; the changed rows
    and the (original, changed) pairs marked ``mark``."""
    from spinlora.data import conjoin_objects

    rows = svamp.read_train_csv(SVAMP_DIR / "mawps-asdiv-a_train.csv")
    every = conjoin_objects(rows, rows, 1.0, 2, 0.5, every=True)
    assert conjoin_objects(rows, rows, 1.0, 2, 0.5, every=True, **{option: 0.0}) == every
    out, n = conjoin_objects(rows, rows, 1.0, 2, 0.5, every=True, **{option: 0.5})
    assert n == every[1]
    return out, [(a, b) for a, b in zip(rows, out) if b.get(mark)]


def test_conjoin_ask_asks_the_same_story_about_the_added_object():
    """data.conjoin_ask: with conjoin_every, a share of the changed rows ask about the added
    object instead; their gold equation is the original's with each number replaced by the
    added object's beside it, its value computed anew; off (0), the rows are conjoin_every's,
    draw for draw; the option needs conjoin_every."""
    from spinlora.config import ConfigError, RunConfig
    from spinlora.data import _sentences

    out, asked = _conjoined_training_rows("ask", "asks_added")
    assert 50 <= len(asked) <= 150
    for a, b in asked:
        added = re.findall(r"(\d+) (?:more )?([a-z]+)", b["conjoined"])
        noun = added[0][1]
        question = _sentences(b["prompt"])[-1].lower()
        assert noun in question and question != _sentences(a["prompt"])[-1].lower()
        used = svamp.number_values(svamp.equation_side(b["answer"]))
        assert set(used) <= {float(x) for x, _ in added}  # only the added object's numbers
        assert b["value"] == svamp.equation_value(b["answer"]) >= 0
        assert b["answer"].endswith(f"#### {svamp.fmt_number(b['value'])}")
        assert len(used) == len(svamp.number_values(svamp.equation_side(a["answer"])))
    assert svamp.swap_numbers("51 + 6 = 57\n#### 57", {51.0: 56, 6.0: 74})[1] == 130.0
    assert svamp.swap_numbers("51 - 6 = 45\n#### 45", {51.0: 5, 6.0: 74}) is None  # negative
    assert svamp.swap_numbers("51 * 4 = 204\n#### 204", {51.0: 5}) is None  # 4 not swapped
    assert svamp.swap_numbers("9 / 3 = 3\n#### 3", {9.0: 10, 3.0: 4}) is None  # not whole
    cfg = RunConfig()
    cfg.data.conjoin_ask = 0.5
    with pytest.raises(ConfigError, match="conjoin_every"):
        cfg.validate()


def test_conjoin_both_asks_about_both_objects_with_the_sum_of_their_answers():
    """data.conjoin_both: with conjoin_every, a share of the changed rows ask about both objects
    ("How many pencils and tomatoes"), the gold equation the original's with each asked count x
    written (x + y), and only where that is the sum of the two objects' answers; the prompt's
    statements are conjoin_every's; off (0), the rows are conjoin_every's, draw for draw; it
    needs conjoin_every and shares its draw with conjoin_ask."""
    from spinlora.config import ConfigError, RunConfig
    from spinlora.data import _sentences

    out, both = _conjoined_training_rows("both", "asks_both")
    assert 80 <= len(both) <= 200
    assert not any(b.get("asks_added") for b in out)
    for a, b in both:
        added = re.findall(r"(\d+) (?:more )?([a-z]+)", b["conjoined"])
        noun = added[0][1]
        old_q, new_q = _sentences(a["prompt"])[-1], _sentences(b["prompt"])[-1]
        assert re.search(rf"\b\w+ and {noun}\b|\b{noun} and \w+", new_q)
        assert new_q.replace(f" and {noun}", "").replace(f"{noun} and ", "") == old_q
        # the sum of the two objects' answers: the gold over the asked numbers, plus the
        # same equation over the added ones (swap_numbers' own reading of the rows)
        asked = svamp.number_values(svamp.equation_side(a["answer"]))
        assert b["value"] == svamp.equation_value(b["answer"]) > a["value"] >= 0
        used = svamp.number_values(svamp.equation_side(b["answer"]))
        assert set(asked) <= set(used) and set(used) - set(asked) <= {float(x) for x, _ in added}
        assert b["answer"].endswith(f"#### {svamp.fmt_number(b['value'])}")
    # accepted where additive, in the story's order; refused where not, or nothing is added
    assert svamp.swap_numbers("13 / 28 = 0.46\n#### 0.46", {13.0: 15}, add=True)[0] \
        .startswith("(13 + 15) / 28 = 1")
    assert svamp.swap_numbers("31 * 11 = 341\n#### 341", {31.0: 27}, add=True,
                              added_first=True)[0] == "(27 + 31) * 11 = 638\n#### 638"
    assert svamp.swap_numbers("51 - 6 = 45\n#### 45", {51.0: 56, 6.0: 4}, add=True) \
        == ("51 + 56 - (6 + 4) = 97\n#### 97", 97.0)
    assert svamp.swap_numbers("51 - 6 = 45\n#### 45", {51.0: 56}, add=True) is None  # x - 6
    assert svamp.swap_numbers("51 / 3 = 17\n#### 17", {51.0: 5, 3.0: 2}, add=True) is None
    assert svamp.swap_numbers("51 + 6 = 57\n#### 57", {9.0: 5}, add=True) is None
    cfg = RunConfig()
    cfg.data.conjoin_both = 0.5
    with pytest.raises(ConfigError, match="conjoin_every"):
        cfg.validate()
    cfg.data.conjoin_every, cfg.data.conjoin_ask, cfg.data.conjoin_both = True, 0.6, 0.5
    with pytest.raises(ConfigError, match="conjoin_both"):
        cfg.validate()


def test_reorder_moves_a_self_contained_statement_to_the_front():
    """data.reorder: a changed row is its own sentences in another order, one statement with a
    number (no pronoun, not first) moved to the front; question, gold and row count stay; the
    same seed gives the same rows; more training rows then use their numbers out of order."""
    from spinlora.data import _sentences, reorder_statements

    rows = svamp.read_train_csv(SVAMP_DIR / "mawps-asdiv-a_train.csv")
    out, n = reorder_statements(rows, 1.0, 1)
    assert len(out) == len(rows) and 400 <= n <= 700  # only some rows have a movable statement
    assert reorder_statements(rows, 1.0, 1) == (out, n)
    assert reorder_statements(rows, 0.0, 1) == (rows, 0)
    changed = [(a, b) for a, b in zip(rows, out) if a is not b]
    assert len(changed) == n
    for a, b in changed:
        before, after = _sentences(a["prompt"]), _sentences(b["prompt"])
        assert (b["answer"], b["value"]) == (a["answer"], a["value"])
        assert sorted(x.lower() for x in before) == sorted(x.lower() for x in after)
        assert after[-1] == before[-1] != after[0]
        assert after[0] == b["moved"] != before[0] and re.search(r"\d", b["moved"])
        assert not {"he", "she", "her", "him", "they", "it"} & set(b["moved"].lower().split())

    def shifted(rs):
        return sum(svamp.out_of_order(r["prompt"], r["answer"]) for r in rs)
    assert shifted(rows) == 570 and shifted(out) > 570 + 200


def test_out_of_order_counts_svamps_order_variation():
    """A gold equation that takes the numbers in another order than the text: 368 of SVAMP's
    1000 problems (paired.py --subset out_of_order)."""
    assert sum(svamp.out_of_order(r["prompt"], r["answer"]) for r in svamp.load_test(SHARED)) == 368
    assert svamp.out_of_order("Dan had $ 3 left. He had $ 4 at the start. How much?", "4 - 3 = 1")
    assert not svamp.out_of_order("Dan had $ 4. He has $ 3 left. How much?", "4 - 3 = 1\n#### 1")
    assert not svamp.out_of_order("Tom has 5 cats and 3 dogs. How many cats?", "5 = 5\n#### 5")


def test_irrelevant_numbers_counts_svamps_variation():
    """A problem stating more numbers than its gold equation uses: 447 of SVAMP's 1000, 340
    of the 3138 training rows (the shift data.distractors works on)."""
    test = svamp.load_test(SHARED)
    train = svamp.read_train_csv(SVAMP_DIR / "mawps-asdiv-a_train.csv")
    assert sum(svamp.irrelevant_numbers(r["prompt"], r["answer"]) for r in test) == 447
    assert sum(svamp.irrelevant_numbers(r["prompt"], r["answer"]) for r in train) == 340
    assert svamp.irrelevant_numbers("Tom has 5 cats and 3 dogs. How many cats?", "5 = 5\n#### 5")
    assert not svamp.irrelevant_numbers("5 cats and 3 more. How many?", "5 + 3 = 8\n#### 8")
    # two or more of them (a second object running through the story): 149 of the 447, and
    # 43 of the training rows' 340, the gap data.conjoin_every fills
    assert sum(svamp.several_irrelevant(r["prompt"], r["answer"]) for r in test) == 149
    assert sum(svamp.several_irrelevant(r["prompt"], r["answer"]) for r in train) == 43
    assert svamp.several_irrelevant("Tom has 5 cats and 3 dogs. He got 2 cats and 4 dogs. How "
                                    "many cats?", "5 + 2 = 7\n#### 7")
    assert not svamp.several_irrelevant("Tom has 5 cats and 3 dogs. How many cats?", "5 = 5")


def test_augment_add_keeps_the_originals_beside_the_changed_rows(tiny_cfg, tiny_model_dir):
    """data.augment: replace keeps the SFT set's size (a changed row takes its original's
    place); add puts each changed row beside its original, so the set grows by as many rows
    as changed, with the same gold answers, and the originals are all still there."""
    from spinlora.data import ChatFormat
    from spinlora.models import load_tokenizer
    from spinlora.start import sft_set

    fmt = ChatFormat(load_tokenizer(str(tiny_model_dir)))
    cfg = tiny_cfg
    cfg.data.train, cfg.data.sft_examples = str(SVAMP_DIR / "mawps-asdiv-a_train.csv"), 300
    cfg.data.reorder, cfg.data.max_length = 1.0, 1024
    _, chosen, _, replaced, counts = sft_set(cfg, fmt)
    assert len(replaced) == 300 and 20 <= counts["reordered"] <= 90
    cfg.data.augment = "add"
    rows, chosen_add, _, added, counts_add = sft_set(cfg, fmt)
    assert chosen_add == chosen and counts_add["reordered"] == counts["reordered"]
    assert len(added) == 300 + counts["reordered"]
    assert [e.prompt for e in added[:300]] == [rows[i]["prompt"] for i in chosen]
    originals = {rows[i]["prompt"] for i in chosen}
    assert [e.prompt for e in added[300:]] == [e.prompt for e in replaced
                                               if e.prompt not in originals]
    assert {e.answer for e in added[300:]} <= {rows[i]["answer"] for i in chosen}


def test_sft_set_applies_conjoin_and_counts_it(tiny_cfg, tiny_model_dir):
    """data.conjoin reaches the SFT set through start.sft_set, with its count (and no other
    variation's); augment=add puts the changed rows beside their originals."""
    from spinlora.data import ChatFormat
    from spinlora.models import load_tokenizer
    from spinlora.start import sft_set

    fmt = ChatFormat(load_tokenizer(str(tiny_model_dir)))
    tiny_cfg.data.train, tiny_cfg.data.sft_examples = str(SVAMP_DIR / "mawps-asdiv-a_train.csv"), 400
    tiny_cfg.data.conjoin, tiny_cfg.data.max_length = 1.0, 1024
    _, chosen, _, examples, counts = sft_set(tiny_cfg, fmt)
    k = counts["with_conjoined_object"]
    assert 25 <= k <= 120 and len(examples) == 400 and "with_distractor" not in counts
    tiny_cfg.data.augment = "add"
    _, chosen_add, _, examples_add, counts_add = sft_set(tiny_cfg, fmt)
    assert chosen_add == chosen and counts_add["rows"] == 400 + k and len(examples_add) == 400 + k
    assert sum(" and " in e.prompt for e in examples_add) > sum(" and " in e.prompt for e in examples)


def test_prompt_rows_varied_draws_only_the_rows_a_variation_changed(tiny_cfg, tiny_model_dir):
    """spin.prompt_rows / rl.prompt_rows = varied: the prompt pool is exactly the SFT rows a
    data variation changed (every reordered and every conjoined row, none else); with no
    variation on it is refused with what to do, and an unknown value by validate."""
    from spinlora.config import ConfigError
    from spinlora.data import ChatFormat, DataError, prompt_pool
    from spinlora.models import load_tokenizer
    from spinlora.start import sft_set

    fmt = ChatFormat(load_tokenizer(str(tiny_model_dir)))
    cfg = tiny_cfg
    cfg.data.train, cfg.data.sft_examples = str(SVAMP_DIR / "mawps-asdiv-a_train.csv"), 400
    cfg.data.max_length = 1024
    rows, chosen, _, plain, _ = sft_set(cfg, fmt)
    assert prompt_pool(plain, "all", "rl.prompt_rows") is plain
    with pytest.raises(DataError, match="rl.prompt_rows=varied.*data.conjoin"):
        prompt_pool(plain, "varied", "rl.prompt_rows")
    cfg.data.conjoin, cfg.data.reorder = 1.0, 0.5
    _, _, _, varied_set, counts = sft_set(cfg, fmt)
    pool = prompt_pool(varied_set, "varied", "spin.prompt_rows")
    changed = [e for e, i in zip(varied_set, chosen) if e.prompt != rows[i]["prompt"]]
    assert counts["with_conjoined_object"] >= 25 and counts["reordered"] >= 25
    assert [e.prompt for e in pool] == [e.prompt for e in changed]
    assert len(pool) <= counts["with_conjoined_object"] + counts["reordered"] < len(varied_set)
    cfg.rl.prompt_rows = "changed"
    with pytest.raises(ConfigError, match="rl.prompt_rows"):
        cfg.validate()


def test_augment_each_epoch_draws_the_objects_anew_on_the_same_rows(tiny_cfg, tiny_model_dir):
    """data.augment_each_epoch: each later epoch holds the same rows in the same places (same
    gold answers), the conjoined objects drawn with that epoch's seed (other objects, about as
    many rows changed, the same draw again for the same epoch); off, or with no variation on,
    there is nothing to draw; with data.augment=add it is refused."""
    from spinlora.config import ConfigError
    from spinlora.data import ChatFormat
    from spinlora.models import load_tokenizer
    from spinlora.start import sft_epochs, sft_set

    fmt = ChatFormat(load_tokenizer(str(tiny_model_dir)))
    cfg = tiny_cfg
    cfg.data.train, cfg.data.sft_examples = str(SVAMP_DIR / "mawps-asdiv-a_train.csv"), 400
    cfg.data.conjoin, cfg.data.conjoin_before, cfg.data.max_length = 1.0, 0.5, 1024
    rows, chosen, _, first, counts = sft_set(cfg, fmt)
    assert sft_epochs(cfg, fmt, rows, chosen, len(first)) is None  # off by default
    cfg.data.augment_each_epoch = True
    later = sft_epochs(cfg, fmt, rows, chosen, len(first))
    second, third = later(1), later(2)
    assert [e.answer for e in second] == [e.answer for e in first] == [e.answer for e in third]
    changed = [i for i, (a, b) in enumerate(zip(first, second)) if a.prompt != b.prompt]
    k = counts["with_conjoined_object"]
    assert k // 2 <= len(changed) <= 2 * k  # the objects of most conjoined rows differ
    assert [e.prompt for e in later(1)] == [e.prompt for e in second]  # seeded by the epoch
    assert [d["epoch"] for d in later.drawn] == [2, 3, 2]
    assert all(abs(d["with_conjoined_object"] - k) <= k // 4 for d in later.drawn)
    # data.conjoin_ask: some rows ask about the added object, their gold changes with the draw
    cfg.data.conjoin_every, cfg.data.conjoin_ask = True, 0.5
    _, _, _, asked_first, asked_counts = sft_set(cfg, fmt)
    assert asked_counts["asking_the_added_object"] >= 5
    asked = sft_epochs(cfg, fmt, rows, chosen, len(asked_first))
    assert [e.answer for e in asked(1)] != [e.answer for e in asked_first]
    assert asked.drawn[0]["asking_the_added_object"] >= 5
    cfg.data.conjoin_every, cfg.data.conjoin_ask = False, 0.0
    cfg.data.conjoin = 0.0
    assert sft_epochs(cfg, fmt, rows, chosen, len(first)) is None  # nothing to draw
    cfg.data.conjoin, cfg.data.augment = 1.0, "add"
    with pytest.raises(ConfigError, match="augment_each_epoch"):
        cfg.validate()


def test_reread_gives_the_problem_twice_in_every_user_turn(tiny_cfg, tiny_model_dir):
    """data.reread (Re-Reading): the user turn is the prompt, READ_AGAIN, the prompt again, in
    the zero-shot prompts that training, sampling and evaluation share and in few-shot chat
    prompts; off, the prompt appears once and the phrase not at all. The key is read from a
    config's overrides like any other."""
    from spinlora.config import load_config
    from spinlora.data import READ_AGAIN, ChatFormat, build_examples
    from spinlora.evaluate.gsm8k import fewshot_prompt_ids
    from spinlora.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    problem = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    tiny_cfg.data.max_length = 512
    on = ChatFormat.from_config(tok, load_config(None, ["data.reread=true"]).data)
    off = ChatFormat.from_config(tok, tiny_cfg.data)
    assert on.reread and not off.reread
    row = {"prompt": problem, "answer": "3 + 4 = 7\n#### 7"}
    (e_on,), _ = build_examples([row], on, tiny_cfg.data)
    (e_off,), _ = build_examples([row], off, tiny_cfg.data)
    text_on, text_off = tok.decode(e_on.prompt_ids), tok.decode(e_off.prompt_ids)
    assert text_on.count(problem) == 2 and READ_AGAIN.strip() in text_on
    assert text_off.count(problem) == 1 and READ_AGAIN.strip() not in text_off
    assert e_on.answer_ids == e_off.answer_ids and e_on.prompt == e_off.prompt == problem
    shots = [{"prompt": "1 + 1?", "answer": "1 + 1 = 2\n#### 2"}]
    fewshot = tok.decode(fewshot_prompt_ids(tok, on, problem, shots, "chat"))
    assert fewshot.count(problem) == 2 and fewshot.count("1 + 1?") == 2


def test_question_first_puts_the_last_sentence_first(tiny_model_dir):
    """data.question_first: the user turn is the problem's question (its last sentence, an
    abbreviation's full stop not counted as an end), a newline, then its statements; a
    one-sentence problem is unchanged; with reread the reordered text is given twice."""
    from spinlora.config import load_config
    from spinlora.data import READ_AGAIN, ChatFormat, split_question
    from spinlora.models import load_tokenizer

    assert split_question("Mrs. Hilt has 3 pens. She buys 4. How many pens does Mrs. Hilt have?") \
        == ("Mrs. Hilt has 3 pens. She buys 4.", "How many pens does Mrs. Hilt have?")
    assert split_question("Mrs. Hilt has 3 pens and 4 cups, how many things?") == \
        ("", "Mrs. Hilt has 3 pens and 4 cups, how many things?")
    assert split_question(" Dan had $ 3 left. If he had $ 4 at the start How much did it cost? ") \
        == ("Dan had $ 3 left.", "If he had $ 4 at the start How much did it cost?")
    tok = load_tokenizer(str(tiny_model_dir))
    qf = ChatFormat.from_config(tok, load_config(None, ["data.question_first=true"]).data)
    assert qf.user_text("Tom has 3 apples. He buys 4 more. How many apples does he have?") == \
        "How many apples does he have?\nTom has 3 apples. He buys 4 more."
    assert qf.user_text("How many is 3 + 4?") == "How many is 3 + 4?"
    both = ChatFormat(tok, None, reread=True, question_first=True)
    assert both.user_text("Tom has 3. How many?") == f"How many?\nTom has 3.{READ_AGAIN}How many?\nTom has 3."


@needs_data
def test_rl_row_kinds_sorts_each_drawn_row_by_what_the_variations_made_of_it(tmp_path, capsys):
    """benchmarks/rl_row_kinds.py: the SFT set rebuilt from a run's config.yaml as the run built
    it; each round's drawn rows averaged by kind (asked about both objects, about the added one,
    an object conjoined beside the asked one, plain); a record without per-row rewards, or rows
    past the rebuilt set, refused with what is wrong while the other runs still print."""
    import yaml

    kinds = load_benchmark("rl_row_kinds")
    data = {"train": str(SVAMP_DIR / "mawps-asdiv-a_train.csv"), "sft_examples": 3000,
            "conjoin": 1.0, "conjoin_before": 0.5, "conjoin_every": True, "conjoin_ask": 0.5,
            "conjoin_both": 0.5}
    run = tmp_path / "run"
    (run / "rl").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": data}))
    rows = kinds.sft_rows(kinds.config_from_dict({"data": data}))[3]
    assert len(rows) == 3000
    by_kind = {k: [i for i, r in enumerate(rows) if kinds.kind(r) == k] for k in kinds.KINDS}
    # the counts the run itself prints: 527 with a second object, 87 / 109 asking about it / both
    assert [len(by_kind[k]) for k in kinds.KINDS] == [109, 87, 527 - 109 - 87, 0, 3000 - 527]
    assert all(rows[i]["answer"].count("+") >= 1 for i in by_kind["asks both"])
    drawn = by_kind["asks both"][:2] + by_kind["conjoined"][:3] + by_kind["plain"][:1]
    rewards = [0.0, 0.25, 0.5, 0.5, 1.0, 0.125]
    rec = {"round": 1, "sft_rows": drawn, "sft_row_rewards": rewards}
    (run / "rl" / "rounds.jsonl").write_text(json.dumps(rec) + "\n")
    table = kinds.table(run)
    assert "| 1 | 0.125 (2) | – | 0.667 (3) | – | 0.125 (1) |" in table
    old = tmp_path / "old"
    (old / "rl").mkdir(parents=True)
    (old / "config.yaml").write_text(yaml.safe_dump({"data": data}))
    (old / "rl" / "rounds.jsonl").write_text(json.dumps({"round": 1, "sft_rows": drawn}) + "\n")
    with pytest.raises(SystemExit) as ended:
        kinds.main([str(old), str(run)])
    assert ended.value.code == 1
    out = capsys.readouterr()
    assert "0.667 (3)" in out.out and "keep no per-row rewards" in out.err
    rec["sft_rows"] = [3000]
    (run / "rl" / "rounds.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match="past the 3000 SFT rows"):
        kinds.table(run)
