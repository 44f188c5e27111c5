"""The run folder cannot be corrupted: a lock against a second live process, --overwrite that
destroys nothing before the new run has read its inputs (and never what spinlora did not write),
a clean recipe in config.yaml, moved folders that resume, a truthful run.json after signals, and
one-line errors for bad models."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spinlora import rundir

ROOT = Path(__file__).resolve().parents[1]


def tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def holder(folder: Path) -> subprocess.Popen:
    """Another process that holds the folder's lock until it is stopped."""
    code = ("import sys, time; from pathlib import Path; from spinlora import rundir; "
            "rundir.lock(Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)")
    p = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert p.stdout.readline().strip() == "locked"
    return p


def fast(cfg):
    cfg.stages, cfg.eval.models = ["sft", "eval"], ["sft"]
    cfg.eval.limit, cfg.data.sft_examples = 2, 4
    return cfg


def test_a_live_run_holds_its_folder(tiny_cfg):
    """A second run, --overwrite or --resume on a folder another live process holds is refused
    with that process's id, and the folder is not touched."""
    from spinlora import run

    out = Path(tiny_cfg.output_dir)
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    other = holder(out)
    try:
        for flag in ("overwrite", "resume", None):
            cfg = fast(tiny_cfg)
            cfg.overwrite, cfg.resume = flag == "overwrite", flag == "resume"
            with pytest.raises(rundir.RunLockedError, match=f"pid {other.pid}"):
                run(cfg)
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    finally:
        other.kill()
        other.wait()


def test_a_killed_runs_lock_is_taken_over(tiny_cfg, capsys):
    from spinlora import run

    out = Path(tiny_cfg.output_dir)
    other = holder(out)
    other.send_signal(signal.SIGKILL)  # kill -9: the kernel drops its lock, its file stays
    other.wait()
    assert rundir.lock_path(out.resolve()).is_file()
    assert run(fast(tiny_cfg))["status"] == "ok"
    assert f"process {other.pid} ended without releasing its lock" in capsys.readouterr().out


def test_overwrite_with_bad_input_keeps_the_old_run_bitwise(tiny_cfg, tiny_data):
    from spinlora import run
    from spinlora.data import DataError

    assert run(fast(tiny_cfg))["status"] == "ok"
    out = Path(tiny_cfg.output_dir)
    before = tree_digest(out)
    cfg = fast(tiny_cfg)
    cfg.overwrite, cfg.data.train = True, str(tiny_data / "missing.jsonl")
    with pytest.raises(DataError, match="not found"):
        run(cfg)
    assert tree_digest(out) == before
    assert not list(out.parent.glob(f".{out.name}.replaced*"))
    # and a good --overwrite replaces it, leaving nothing aside
    cfg.data.train = str(tiny_data / "train.jsonl")
    assert run(cfg)["status"] == "ok"
    assert not list(out.parent.glob(f".{out.name}.replaced*"))


def test_overwrite_never_touches_a_folder_spinlora_did_not_write(tiny_cfg):
    from spinlora import run

    out = Path(tiny_cfg.output_dir)
    out.mkdir(parents=True)
    (out / "run.json").write_text('{"status": "ok"}')  # someone else's run.json
    (out / "thesis.tex").write_text("years of work")
    cfg = fast(tiny_cfg)
    cfg.overwrite = True
    with pytest.raises(rundir.OutputExistsError, match="holds no spinlora run"):
        run(cfg)
    assert (out / "thesis.tex").read_text() == "years of work"


def test_bad_input_leaves_no_half_made_folder(tiny_cfg, tiny_data):
    from spinlora import run
    from spinlora.data import DataError

    cfg = fast(tiny_cfg)
    cfg.data.train = str(tiny_data / "missing.jsonl")
    with pytest.raises(DataError):
        run(cfg)
    assert not Path(cfg.output_dir).exists()


def test_config_yaml_is_a_recipe_and_a_moved_run_resumes(tiny_cfg, tmp_path):
    """config.yaml carries no command-line flag, so reusing it as a recipe replaces nothing;
    a copied run folder resumes where it now lies."""
    import yaml

    from spinlora import load_config, run

    cfg = fast(tiny_cfg)
    cfg.overwrite = True  # as --overwrite would set it
    assert run(cfg)["status"] == "ok"
    out = Path(cfg.output_dir)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert "overwrite" not in saved and "resume" not in saved
    again = load_config(out / "config.yaml")
    with pytest.raises(rundir.OutputExistsError, match="already holds a run"):
        run(again)  # the recipe alone does not replace the run it came from
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    cfg2 = load_config(moved / "config.yaml", [f"output_dir={moved}", "resume=true"])
    summary = run(cfg2)
    assert summary["status"] == "ok" and summary["stages"]["sft"] == "reused"


CHILD = r"""
import sys, time
from pathlib import Path
import spinlora.stages.spin as sp
from spinlora import cli

ready, calls, real = Path(sys.argv[1]), [], sp.make_pairs

def second_iteration_waits(*a, **k):  # SPIN iteration 1 is finished: say so, then wait
    calls.append(1)
    if len(calls) == 2:
        ready.write_text("ready")
        time.sleep(120)
    return real(*a, **k)

sp.make_pairs = second_iteration_waits
sys.exit(cli.main(sys.argv[2:]))
"""


def _pipeline_process(cfg_path: Path, out: Path, ready: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(ready), "run", str(cfg_path),
                             "--output-dir", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, "the run ended before the stage finished"
        assert time.time() - t0 < seconds
        time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_run_json_tells_the_truth_after_a_signal(tiny_cfg, tmp_path, sig):
    """SIGTERM: status interrupted with the finished stages listed. kill -9: run.json keeps the
    stages finished so far and still says running; rundir.state and the report call it killed
    (no live process holds its lock) and say how to resume, and the next start (--resume)
    records that the run was killed."""
    from spinlora import run
    from spinlora.config import save_config
    from spinlora.report import write_report

    cfg = fast(tiny_cfg)
    cfg.stages, cfg.spin.iterations = ["sft", "spin", "eval"], 2
    cfg_path = tmp_path / "recipe.yaml"
    save_config(cfg, cfg_path)
    out = tmp_path / "signalled"
    ready = tmp_path / "ready"
    proc = _pipeline_process(cfg_path, out, ready)
    _wait_for(ready, proc)  # SPIN iteration 1 finished, iteration 2 about to start
    assert rundir.state(out) == "running"  # the live child holds the lock
    proc.send_signal(sig)
    proc.wait(timeout=120)
    status = json.loads((out / "run.json").read_text())
    assert status["stages"].get("sft") == "ok"
    summary_md = Path(write_report(out, out=tmp_path / "report")["summary"]).read_text()
    if sig == signal.SIGTERM:
        assert status["status"] == "interrupted" == rundir.state(out)
        assert "**Status: interrupted**" in summary_md
    else:
        assert status["status"] == "running" and rundir.state(out) == "killed"
        assert "**Status: killed**" in summary_md and "--resume" in summary_md
        cfg.output_dir, cfg.resume = str(out), True
        summary = run(cfg)
        assert summary["status"] == "ok" and summary["resumed_after"] == "killed"


def test_junk_gguf_is_one_line_and_exit_2(tmp_path, capsys):
    from spinlora import cli

    junk = tmp_path / "x.gguf"
    junk.write_bytes(os.urandom(1024))
    out = tmp_path / "run"
    rc = cli.main(["run", f"model.name={junk}", "--output-dir", str(out), "stages=[eval]"])
    err = capsys.readouterr().err
    assert rc == 2 and "not a GGUF model spinlora can read" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_unreachable_hub_fails_in_seconds(monkeypatch):
    import socket

    from spinlora.models import ModelNotFoundError, resolve_model_path

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", offline)
    t0 = time.time()
    with pytest.raises(ModelNotFoundError, match="cannot be reached"):
        resolve_model_path("nobody/nothing")
    assert time.time() - t0 < 10


def test_no_third_party_warning_on_import_and_attach(tiny_model_dir):
    """The two messages every run printed that a user could do nothing about are gone."""
    code = ("import spinlora, bitsandbytes, peft; from transformers import AutoModelForCausalLM;"
            "from spinlora.adapters import attach; from spinlora.config import RunConfig;"
            f"m = AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r});"
            "attach(m, RunConfig().adapter)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert r.returncode == 0, r.stderr
    assert "gemm_4bit_forward" not in r.stderr and "is_gradient_checkpointing" not in r.stderr


def test_empty_train_file_and_zero_examples_say_what_is_wrong(tiny_cfg, tmp_path):
    from spinlora import run
    from spinlora.config import ConfigError
    from spinlora.data import DataError

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = fast(tiny_cfg)
    cfg.data.train = str(empty)
    with pytest.raises(DataError, match="holds no rows"):
        run(cfg)
    assert not Path(cfg.output_dir).exists()
    cfg.data.sft_examples = 0
    with pytest.raises(ConfigError, match="data.sft_examples"):
        cfg.validate()


def test_checkpointing_runs_and_plans_without_transformers_deprecation_warnings(tiny_cfg):
    """transformers 5 renamed gradient_checkpointing_enable / _disable (the old names warn on
    every call); spinlora's training and its memory plan, which probes with checkpointing, call
    the new ones: no FutureWarning about checkpointing reaches the user."""
    import warnings

    from spinlora import run
    from spinlora.plan import run_plan

    tiny_cfg.train.gradient_checkpointing = True
    tiny_cfg.stages = ["sft"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # (each call seen, not only a location's first)
        # peft's read of the old is_gradient_checkpointing is third-party; spinlora filters it
        warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated")
        run(tiny_cfg)
        tiny_cfg.memory_budget = "64GiB"
        tiny_cfg.overwrite = True
        run_plan(tiny_cfg)
    said = [str(w.message) for w in caught if "checkpointing" in str(w.message)]
    assert not said, said
