"""The sweep: one result file per point, statuses recorded (a diverging lr is 'diverged', not a
crash), resumable, best lr and mean ± std per method, a plot."""
import json
from pathlib import Path

from spinlora.cli import main
from spinlora.sweep import run_sweep, summarise


def test_sweep_grid_statuses_resume_and_summary(tiny_cfg, monkeypatch, capsys):
    cfg = tiny_cfg
    cfg.sweep.methods, cfg.sweep.lrs, cfg.sweep.seeds = ["lora", "ia3"], [1e-3, 1e30], [0, 1]
    cfg.sweep.ranks, cfg.sweep.batch_sizes = [2], [4]
    cfg.eval.gsm8k_generate = False
    cfg.data.sft_examples = 8
    res = run_sweep(cfg)
    root = Path(cfg.output_dir)
    results = [json.loads(f.read_text()) for f in sorted((root / "results").glob("*.json"))]
    assert len(results) == res["points"] == 8
    by_lr = {lr: {r["status"] for r in results if r["point"]["lr"] == lr} for lr in (1e-3, 1e30)}
    assert by_lr[1e-3] == {"ok"}
    assert all(r["score"] < 0 for r in results if r["point"]["lr"] == 1e-3)  # a log-prob
    assert "diverged" in by_lr[1e30]  # recorded as a status; the sweep went on
    assert all(r["score"] is None for r in results if r["status"] == "diverged")
    assert res["best"]["lora r2 bs4"]["lr"] == 1e-3 and res["best"]["lora r2 bs4"]["seeds"] == 2
    assert (root / "score_vs_lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| lora | 2 | 4 | 0.001 |" in (root / "summary.md").read_text()

    # resume: nothing reruns; a deleted result file (an interrupted point) runs again
    (root / "results" / "ia3_r2_bs4_lr0.001_s1.json").unlink()
    calls = []
    import spinlora.pipeline as pl
    real = pl.run
    monkeypatch.setattr(pl, "run", lambda c: calls.append(c.output_dir) or real(c))
    run_sweep(cfg)
    assert [Path(c).name for c in calls] == ["ia3_r2_bs4_lr0.001_s1"]
    assert summarise(root)["points"] == 8


def test_point_names_are_unique_for_any_value():
    from spinlora.sweep import point_name

    base = dict(method="lora", r=8, batch_size=8, seed=0)
    names = {point_name({**base, "lr": lr}) for lr in (1e-4, 1.5e-4, 1.05e-4, 2e-4)}
    assert len(names) == 4
