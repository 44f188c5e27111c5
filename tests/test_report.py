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
