"""`spinlora run … --resume` after a real SIGKILL at several moments gives the same adapters and
scores as a run that was never interrupted (finished stages and iterations reused, the
interrupted one redone; λ / lr schedule, mix_previous pairs and sampling seeds restored)."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spinlora import cli
from spinlora.config import save_config

ROOT = Path(__file__).resolve().parents[1]

# a child process that kills itself (SIGKILL) at the n-th call of the function `where` names
KILLER = r"""
import os, signal, sys
from spinlora import cli

where, n = sys.argv[1], int(sys.argv[2])
calls = {"n": 0}

def killer(fn):
    def wrapped(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: like kill -9
        return fn(*a, **k)
    return wrapped
"""

CHILD = KILLER + r"""
import spinlora.pipeline as pl
import spinlora.stages.spin as sp
import spinlora.train as tr

if where == "train_step":
    tr.MetricsLog.log = killer(tr.MetricsLog.log)
elif where == "generate":
    sp.generate = killer(sp.generate)
elif where == "reference":
    sp.reference_pass = killer(sp.reference_pass)
elif where == "eval":
    pl._eval_one = killer(pl._eval_one)
sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, tiny_model_dir, tiny_data):
    from spinlora.config import load_config

    d = tmp_path_factory.mktemp("resume")
    cfg = load_config(None, [
        f"model.name={tiny_model_dir}", "model.dtype=float32",
        f"data.train={tiny_data / 'train.jsonl'}", f"data.eval={tiny_data / 'test.jsonl'}",
        "data.sft_examples=12", "data.max_length=160", "train.batch_size=4",
        "train.micro_batch_size=4", "train.lr=1e-2", "generation.max_new_tokens=12",
        "generation.batch_size=4", "spin.iterations=2", "spin.prompts=6", "spin.heldout=3",
        "spin.lr=[1e-2, 5e-3]", "spin.beta=[0.1, 0.5]", "spin.mix_previous=true",
        "spin.opponent.temperature=0.8", "eval.limit=3"])
    path = d / "recipe.yaml"
    save_config(cfg, path)
    ref = d / "uninterrupted"
    assert cli.main(["run", str(path), "--output-dir", str(ref)]) == 0
    return path, ref


def _same_run(a: Path, b: Path) -> None:
    for stage in ("sft", "spin/iter_1", "spin/iter_2"):
        ta, tb = (load_file(x / stage / "adapter" / "adapter_model.safetensors") for x in (a, b))
        assert ta.keys() == tb.keys()
        for k in ta:
            torch.testing.assert_close(ta[k], tb[k], rtol=1e-5, atol=1e-6, msg=f"{stage} {k}")
    ra, rb = (json.loads((x / "eval" / "result.json").read_text())["rows"] for x in (a, b))
    assert [r["label"] for r in ra] == [r["label"] for r in rb]
    for x, y in zip(ra, rb):
        assert x["accuracy"] == y["accuracy"]
        assert x["gold_logp_per_token"] == pytest.approx(y["gold_logp_per_token"], abs=1e-5)
    i2a, i2b = (json.loads((x / "spin/iter_2/result.json").read_text()) for x in (a, b))
    assert (i2a["beta"], i2a["lr"], i2a["pairs"]) == (i2b["beta"], i2b["lr"], i2b["pairs"]) == (0.5, 5e-3, 12)


# SFT has 3 steps, each SPIN iteration 2: train_step 2 is inside SFT, 6 inside iteration 2
@pytest.mark.parametrize("where,n", [("train_step", 2), ("generate", 2), ("reference", 1),
                                     ("train_step", 6), ("eval", 3)])
def test_sigkill_then_resume_equals_uninterrupted(recipe, tmp_path, where, n):
    path, ref = recipe
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", CHILD, where, str(n), "run", str(path),
                           "--output-dir", str(out)], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "eval" / "result.json").exists()  # it really stopped before the end
    assert cli.main(["run", str(path), "--output-dir", str(out), "--resume"]) == 0
    _same_run(ref, out)
    assert not list(out.rglob("*.partial"))
    ev = json.loads((out / "eval" / "result.json").read_text())
    status = json.loads((out / "run.json").read_text())
    assert status["resumed_after"] == "killed" and status["status"] == "ok"
    if where == "eval":  # the models evaluated before the kill keep their time and memory rows
        reused = [r["label"] for r in ev["rows"] if r.get("reused")]
        assert len(reused) == n - 1
        for label in reused:
            assert any(f"[{label}]" in k for k in ev["accounting"]["phases"]), label
            assert label in (out / "summary.md").read_text()


def test_resume_refuses_another_config(recipe, tmp_path, capsys):
    path, ref = recipe
    rc = cli.main(["run", str(path), "--output-dir", str(ref), "--resume", "spin.lr=1e-3"])
    assert rc == 2 and "spin.lr" in capsys.readouterr().err
    rc = cli.main(["run", str(path), "--output-dir", str(tmp_path / "none"), "--resume"])
    assert rc == 2 and "no spinlora run" in capsys.readouterr().err
    # a run written before an option existed ran at its default: it resumes with the default,
    # and is refused with another value
    older = tmp_path / "older"
    shutil.copytree(ref, older)
    text = (older / "config.yaml").read_text()
    assert "  reference: opponent\n" in text
    (older / "config.yaml").write_text(text.replace("  reference: opponent\n", ""))
    rc = cli.main(["run", str(path), "--output-dir", str(older), "--resume", "spin.reference=start"])
    assert rc == 2 and "['spin.reference']" in capsys.readouterr().err
    assert cli.main(["run", str(path), "--output-dir", str(older), "--resume"]) == 0
    assert "  reference: opponent\n" in (older / "config.yaml").read_text()


RL_CHILD = KILLER + r"""
import spinlora.stages.rl as rl

# the tiny model never gets a sum right: a stand-in reward that differs inside each group
rl.is_correct = lambda text, gold, check="final": len(text) % 2 == 0
if where == "generate":
    rl.generate = killer(rl.generate)
elif where == "train":
    rl.train_loop = killer(rl.train_loop)
sys.exit(cli.main(sys.argv[3:]))
"""


@pytest.mark.parametrize("where,n", [("generate", 3), ("train", 3)])
def test_rl_sigkill_then_resume_keeps_finished_rounds(tiny_model_dir, tiny_data, tmp_path, where,
                                                       n):
    """An RL run killed in round 3 (before its sampling, or after it, before its training)
    resumes at round 3 with rounds 1-2 kept, and ends with every round's adapter
    equal to a run that was never interrupted."""
    from spinlora.config import load_config

    cfg = load_config(None, [
        f"model.name={tiny_model_dir}", "model.dtype=float32", "stages=[sft,rl]",
        f"data.train={tiny_data / 'train.jsonl'}", "data.sft_examples=12",
        "data.max_length=160", "train.batch_size=16", "train.micro_batch_size=16",
        "train.lr=1e-2", "generation.max_new_tokens=12", "generation.batch_size=16",
        "rl.rounds=4", "rl.prompts=4", "rl.samples=4", "rl.lr=1e-2", "rl.heldout=3",
        "rl.temperature=0.8"])
    path = tmp_path / "recipe.yaml"
    save_config(cfg, path)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}

    def child(where, n, out, *flags):
        return subprocess.run([sys.executable, "-c", RL_CHILD, where, str(n), "run", str(path),
                               "--output-dir", str(out), *flags], env=env, capture_output=True,
                              text=True)

    ref, out = tmp_path / "uninterrupted", tmp_path / "run"
    assert child("none", 0, ref).returncode == 0
    proc = child(where, n, out)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    kept = sorted(p.name for p in (out / "rl.partial").iterdir() if p.name.startswith("round_"))
    assert kept[:2] == ["round_1", "round_2"] and "round_4" not in kept
    assert not (out / "rl.partial" / "round_3" / "result.json").exists()
    proc = child("none", 0, out, "--resume")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RL rounds 1..2 finished earlier" in proc.stdout
    assert not list(out.rglob("*.partial"))
    for sub in [f"rl/round_{t}" for t in range(1, 5)] + ["rl"]:
        ta, tb = (load_file(x / sub / "adapter" / "adapter_model.safetensors") for x in (ref, out))
        assert ta.keys() == tb.keys()
        for k in ta:
            torch.testing.assert_close(ta[k], tb[k], rtol=1e-5, atol=1e-6, msg=f"{sub} {k}")
    ra, rb = (json.loads((x / "rl" / "result.json").read_text()) for x in (ref, out))
    assert [r["sft_rows"] for r in ra["rounds"]] == [r["sft_rows"] for r in rb["rounds"]]
    assert [r["reward_mean"] for r in ra["rounds"]] == [r["reward_mean"] for r in rb["rounds"]]
    assert (ra["rounds_reused"], rb["rounds_reused"]) == (0, 2)
    assert rb["step0_ratio_ok"] and rb["heldout_before"] == ra["heldout_before"]
    # every round's training steps, once each, in the stage's log
    logged = (out / "rl" / "metrics.jsonl").read_text().splitlines()
    rounds = [json.loads(x)["round"] for x in logged]
    assert rounds == sorted(rounds) and set(rounds) == {1, 2, 3, 4}
    assert rounds == [json.loads(x)["round"]
                      for x in (ref / "rl" / "metrics.jsonl").read_text().splitlines()]
