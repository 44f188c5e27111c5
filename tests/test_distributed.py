"""Data parallelism (``spinlora.dist``): two processes on gloo, launched with torchrun, produce
the run one process produces with the same global batch: the same generations, the same
step-0 SPIN loss (ln 2), adapters equal within float tolerance, and one set of files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch built without torch.distributed")


def _args(tiny_model_dir, tiny_data, out):
    return ["run", f"output_dir={out}", f"model.name={tiny_model_dir}", "model.dtype=float32",
            "model.device=cpu", f"data.train={tiny_data / 'train.jsonl'}",
            f"data.eval={tiny_data / 'test.jsonl'}", "data.sft_examples=12",
            "data.max_length=160", "train.batch_size=4", "train.micro_batch_size=2",
            "train.lr=1e-2", "generation.max_new_tokens=12", "generation.batch_size=2",
            "spin.iterations=2", "spin.prompts=6", "spin.heldout=3", "spin.lr=1e-2",
            "spin.correct_pairs=keep", "eval.limit=3"]


def _launch(n: int, args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same kernels in both runs
    cmd = [sys.executable, "-m", "spinlora", *args] if n == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
        "--master_port", "29517", "-m", "spinlora", *args]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_two_processes_equal_one(tiny_model_dir, tiny_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(1, _args(tiny_model_dir, tiny_data, one))
    _launch(2, _args(tiny_model_dir, tiny_data, two))
    assert not list(two.rglob("*.partial")) and not list(two.rglob("*.tmp"))
    assert json.loads((two / "run.json").read_text())["processes"] == 2
    assert json.loads((one / "run.json").read_text())["processes"] == 1
    for it in (1, 2):
        g1 = _lines(one / "spin" / f"iter_{it}" / "generations.jsonl")
        g2 = _lines(two / "spin" / f"iter_{it}" / "generations.jsonl")
        assert g1 == g2  # each generation batch ran exactly as in one process
        r1 = json.loads((one / "spin" / f"iter_{it}" / "result.json").read_text())
        r2 = json.loads((two / "spin" / f"iter_{it}" / "result.json").read_text())
        assert r2["step0_ok"] and r2["step0_pref_loss"] == pytest.approx(
            r1["step0_pref_loss"], abs=1e-6)
        assert r2["steps"] == r1["steps"] and r2["pairs"] == r1["pairs"]
    for sub in ("sft/adapter", "spin/iter_1/adapter", "spin/iter_2/adapter"):
        a = load_file(one / sub / "adapter_model.safetensors")
        b = load_file(two / sub / "adapter_model.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)
    m1 = _lines(one / "sft" / "metrics.jsonl")
    m2 = _lines(two / "sft" / "metrics.jsonl")  # written once, by the main process
    assert len(m1) == len(m2)
    assert [r["loss"] for r in m2] == pytest.approx([r["loss"] for r in m1], rel=1e-5)
    e1 = json.loads((one / "eval" / "result.json").read_text())["rows"]
    e2 = json.loads((two / "eval" / "result.json").read_text())["rows"]
    assert [r["accuracy"] for r in e2] == [r["accuracy"] for r in e1]
    assert [r["gold_logp_per_token"] for r in e2] == pytest.approx(
        [r["gold_logp_per_token"] for r in e1], abs=1e-4)


def test_checked_beams_split_over_two_processes_equal_one(tiny_model_dir, tmp_path):
    """``eval.checked_beams``: two processes each run half of the beam-search calls and write
    the one process's answers; the checked row reads the greedy row's file only once the main
    process has written it."""
    from conftest import write_svamp

    root = write_svamp(tmp_path / "data")
    runs = {}
    for n in (1, 2):
        out = tmp_path / f"p{n}"
        _launch(n, ["run", f"output_dir={out}", f"model.name={tiny_model_dir}",
                    "model.dtype=float32", "model.device=cpu", "stages=[eval]",
                    "eval.models=[base]", "eval.tasks=[svamp]", f"eval.data_root={root}",
                    "eval.checked_beams=2", "generation.max_new_tokens=8",
                    "generation.batch_size=2"])
        runs[n] = out / "eval"
    one = _lines(runs[1] / "samples_base+checked@2_svamp.jsonl")
    two = _lines(runs[2] / "samples_base+checked@2_svamp.jsonl")
    assert len(one) == 5 and sum(bool(s.get("checked")) for s in one) >= 2  # 2+ beam calls
    assert two == one
    rows = json.loads((runs[2] / "result.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["base", "base+checked@2"]
    assert "error" not in rows[1]
