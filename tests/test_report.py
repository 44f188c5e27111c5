"""The report from fixture result files: table values come from the files, plots are PNGs."""
import csv
import json

from spinlora.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _fixture_run(root, name, sft_acc, spin_accs):
    run = root / name
    (run / "sft").mkdir(parents=True)
    acct = {"peak_over_baseline_bytes": 300 * 2**20,
            "phases": {"train": {"seconds": 12.5, "tokens": 1000, "tokens_per_s": 80.0,
                                 "peak_over_baseline_bytes": 300 * 2**20}}}
    (run / "sft" / "result.json").write_text(json.dumps(
        {"parameters": {"trainable": 645120}, "accounting": acct}))
    (run / "sft" / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"epoch": e / 4, "loss": 2 - e / 4}) for e in range(1, 5)))
    rows = [{"label": "base", "tasks": {"gsm8k": {"acc": 0.01, "acc_stderr": 0.01, "n": 100},
                                        "arc_challenge": {"acc": 0.25, "acc_stderr": 0.02, "n": 200,
                                                          "acc_norm": 0.27},
                                        "mmlu": {"acc": 0.3, "acc_stderr": 0.01, "n": 40,
                                                 "per_subject": {"anatomy": 0.35, "virology": 0.45},
                                                 "acc_macro": 0.4}}},
            {"label": "lora_sft", "tasks": {"gsm8k": {"acc": sft_acc, "acc_stderr": 0.02, "n": 100}}}]
    for t, a in enumerate(spin_accs, 1):
        d = run / "spin" / f"iter_{t}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({
            "iteration": t, "beta": 0.1, "lr": 5e-5, "pairs": 8, "generation": {"unfinished": 1},
            "step0_loss": 0.6931, "loss_last": 0.5, "margin_last": 0.3, "disc_accuracy_last": 0.8,
            "heldout": {}, "parameters": {"trainable": 645120}, "accounting": acct}))
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(
            {"epoch": s / 2, "loss": 0.69 - s / 10, "margin": s / 10, "logp_real": -100 - s,
             "logp_gen": -80 - 3 * s, "beta": 0.1, "reward_real": -0.1 * s,
             "reward_gen": -0.3 * s}) for s in (1, 2)))
        rows.append({"label": f"lora_spin_iter_{t}",
                     "tasks": {"gsm8k": {"acc": a, "acc_stderr": 0.02, "n": 100}}})
    (run / "eval").mkdir()
    (run / "eval" / "result.json").write_text(json.dumps(
        {"rows": rows, "prompt": "chat template, zero-shot", "shots": 0, "n": 100,
         "limit": 100, "seed": 3, "task_shots": {"gsm8k": 0, "arc_challenge": 25}}))
    return run


def test_report_from_fixture_files(tmp_path):
    a = _fixture_run(tmp_path, "runA", 0.123, [0.2, 0.25])
    b = _fixture_run(tmp_path, "runB", 0.111, [0.3])
    out = write_report(a, b, out=tmp_path / "rep")
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "0.123 ± 0.020 (100)" in md and "0.250 ± 0.020 (200)" in md
    assert "arc_challenge 25-shot" in md and "seed 3" in md
    assert "| virology | 0.450 |" in md and "| **macro average** | 0.400 |" in md
    with open(out["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 + 3
    assert [r["model"] for r in rows if r["run"] == "runB"] == ["base", "lora_sft", "lora_spin_iter_1"]
    assert next(r for r in rows if r["run"] == "runA" and r["model"] == "lora_spin_iter_2")["gsm8k"] == "0.25"
    for key in ("loss", "scores", "spin_diagnostics"):
        assert open(out[key], "rb").read(8) == PNG
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page


def _samples(run, label, verdicts, task="svamp"):
    name = f"samples_{label}_svamp.jsonl" if task == "svamp" else f"samples_{label}.jsonl"
    key = "index" if task == "svamp" else "question"
    (run / "eval" / name).write_text("".join(
        json.dumps({key: i if task == "svamp" else f"q{i}", "correct": bool(c)}) + "\n"
        for i, c in enumerate(verdicts)))


def _machine(run, cpu, dtype="bfloat16"):
    (run / "run.json").write_text(json.dumps(
        {"environment": {"cpu": {"model": cpu, "isa": ["avx512_bf16"]}, "cuda": None},
         "precision": {"dtype": dtype}}))


def test_report_pairs_models_on_the_same_problems_and_warns_across_machines(tmp_path):
    """The paired section: each model against the first run's SFT model over the problems both
    answered (SVAMP by index, GSM8K by question), gained and lost counted; a model without
    samples gets none; runs evaluated on different CPUs are flagged, the same CPU is not."""
    a = _fixture_run(tmp_path, "runA", 0.5, [0.6])
    b = _fixture_run(tmp_path, "runB", 0.5, [])
    for run in (a, b):  # SVAMP scores beside GSM8K's
        ev = json.loads((run / "eval" / "result.json").read_text())
        for r in ev["rows"][1:]:
            r["tasks"]["svamp"] = {"acc": 0.5, "acc_stderr": 0.2, "n": 6}
        (run / "eval" / "result.json").write_text(json.dumps(ev))
    sft = [1, 0, 1, 0, 0, 1]
    _samples(a, "lora_sft", sft)
    _samples(a, "lora_spin_iter_1", [1, 1, 1, 0, 1, 0])  # +2 -1 over 6
    _samples(a, "lora_sft", sft, task="gsm8k")
    _samples(a, "lora_spin_iter_1", [1, 1, 1, 1, 0, 1], task="gsm8k")  # +2 over 6
    _samples(b, "lora_sft", sft[:4])  # a 4-problem subset: paired on those 4
    _machine(a, "AMD EPYC")
    _machine(b, "AMD EPYC")
    write_report(a, b, out=tmp_path / "same")
    md = (tmp_path / "same" / "summary.md").read_text()
    assert "## Paired differences against runA / lora_sft" in md
    section = md.split("## Paired")[1].split("## Run")[0]
    row = next(x for x in section.splitlines() if x.startswith("| runA | lora_spin_iter_1 |"))
    assert "+16.7 ± 30.7 (+2 / −1, 6)" in row  # d = 0,+1,0,0,+1,-1: mean 1/6, sd 0.753
    assert "+33.3 ± 21.1 (+2 / −0, 6)" in row  # GSM8K keyed by question
    assert "| runB | lora_sft | – | +0.0 ± 0.0 (+0 / −0, 4) |" in section
    assert "runA | base" not in section  # no samples: no row
    assert "different machines" not in md
    _machine(b, "Intel Xeon (AMX)")
    write_report(a, b, out=tmp_path / "other")
    md = (tmp_path / "other" / "summary.md").read_text()
    assert "**These runs evaluated on different machines or dtypes**" in md
    assert "runB: Intel Xeon (AMX) (avx512_bf16), bfloat16" in md
    # two runs with one folder name on two CPUs are still two machines
    c = _fixture_run(tmp_path / "elsewhere", "runA", 0.5, [])
    _machine(c, "Intel Xeon (AMX)")
    write_report(a, c, out=tmp_path / "same_name")
    assert "**These runs evaluated on different machines or dtypes**" in (
        tmp_path / "same_name" / "summary.md").read_text()
    # a damaged samples file costs the paired section, not the report
    (a / "eval" / "samples_lora_sft_svamp.jsonl").write_text('{"index": 0}\n')
    write_report(a, b, out=tmp_path / "damaged")
    md = (tmp_path / "damaged" / "summary.md").read_text()
    assert "Paired differences left out:" in md and "line 1" in md and "## Run runA" in md


def test_report_lists_rl_rounds_and_their_phases(tmp_path):
    """An RL run's rounds (reward, groups with signal, step-0 checks) and its phases' time and
    memory are in the report, like SFT's and SPIN's; a round that trained nothing shows '-'."""
    run = _fixture_run(tmp_path, "runRL", 0.2, [])
    (run / "rl").mkdir()
    phases = {"generate": {"seconds": 65.8, "tokens": 8982, "tokens_per_s": 136.4,
                           "peak_over_baseline_bytes": 1806 * 2**20},
              "train": {"seconds": 95.9, "tokens": 17847, "tokens_per_s": 186.2,
                        "peak_over_baseline_bytes": 1266 * 2**20}}
    rounds = [{"round": 1, "prompts": 32, "samples": 256, "reward_mean": 0.18,
               "informative_groups": 10, "trained_samples": 80, "steps": 5, "step0_ratio": 1.0,
               "step0_kl": 0.0, "loss_last": -0.0064, "kl_last": -0.003},
              {"round": 2, "prompts": 32, "samples": 256, "reward_mean": 0.0,
               "informative_groups": 0, "trained_samples": 0}]
    (run / "rl" / "result.json").write_text(json.dumps(
        {"advantage": "grpo", "beta": 0.04, "lr": 1e-4, "samples_per_prompt": 8,
         "rounds": rounds, "step0_ratio_ok": True, "first_round_kl0_ok": False,
         "accounting": {"phases": phases}}))
    write_report(run, out=tmp_path / "rep")
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "### RL rounds (grpo, β 0.04, lr 0.0001, 8 samples a prompt)" in md
    assert "| 1 | 32 | 256 | 0.180 | 10 | 80 | 5 | 1.0000 | 0.0000 | -0.0064 | -0.0030 |" in md
    assert "| 2 | 32 | 256 | 0.000 | 0 | 0 | - | - | - | - | - |" in md
    assert "ratio 1 in every round held; KL 0 in the first round FAILED" in md
    assert "| rl | generate | 65.8 | 8982 | 136.4 | 1806 |" in md
    assert "| rl | train | 95.9 | 17847 | 186.2 | 1266 |" in md


def test_report_names_an_rft_run_and_leaves_out_checks_it_has_not(tmp_path):
    """rl.algorithm: rft has no ratio or KL: the report says what it kept, not a failed check."""
    run = _fixture_run(tmp_path, "runRFT", 0.2, [])
    (run / "rl").mkdir()
    rounds = [{"round": 1, "prompts": 64, "samples": 512, "reward_mean": 0.25,
               "informative_groups": 30, "trained_samples": 70, "steps": 14,
               "loss_first": 0.31, "loss_last": 0.12}]
    (run / "rl" / "result.json").write_text(json.dumps(
        {"algorithm": "rft", "advantage": None, "beta": None, "keep": 4, "lr": 1.5e-3,
         "samples_per_prompt": 8, "rounds": rounds, "step0_ratio_ok": None,
         "first_round_kl0_ok": None}))
    write_report(run, out=tmp_path / "rep")
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert ("### RL rounds (rejection-sampling fine-tuning, up to 4 right answers kept, lr 0.0015, "
            "8 samples a prompt)") in md
    assert "| 1 | 64 | 512 | 0.250 | 30 | 70 | 14 | - | - | 0.1200 | - |" in md
    assert "Step-0 checks" not in md and "FAILED" not in md


def test_report_says_how_a_checked_row_decodes(tmp_path):
    plain = _fixture_run(tmp_path, "plain", 0.1, [])
    checked = _fixture_run(tmp_path, "checked", 0.1, [])
    ev = json.loads((checked / "eval" / "result.json").read_text())
    ev["rows"].append({"label": "lora_sft+checked@4", "tasks": {"svamp": {
        "acc": 0.43, "acc_stderr": 0.016, "n": 1000, "checked_beams": 4}}})
    (checked / "eval" / "result.json").write_text(json.dumps(ev))
    write_report(plain, checked, out=tmp_path / "rep")
    notes = [line for line in (tmp_path / "rep" / "summary.md").read_text().splitlines()
             if line.startswith("- plain:") or line.startswith("- checked:")]
    assert len(notes) == 2
    assert "checked@" not in notes[0]
    assert notes[1].endswith("greedy (+checked@4: greedy, and a 4-beam search where the greedy "
                             "answer's value is missing or negative)")
