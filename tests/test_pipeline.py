"""Run folders: refuse to overwrite, keep finished stages on interrupt, clear CLI errors."""
import json
from pathlib import Path

import pytest
import yaml

from spinlora import cli
from spinlora.accounting import MMAP_THRESHOLD
from spinlora.pipeline import OutputExistsError, run


def test_refuses_existing_run_without_overwrite(tiny_cfg):
    out = Path(tiny_cfg.output_dir)
    out.mkdir(parents=True)
    (out / "config.yaml").write_text("x: 1\n")
    (out / "run.json").write_text('{"spinlora_run": 1}')  # spinlora's marker
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run(tiny_cfg)
    assert (out / "config.yaml").read_text() == "x: 1\n"  # untouched


def test_overwrite_never_empties_a_folder_that_is_not_a_run(tiny_cfg):
    out = Path(tiny_cfg.output_dir)
    out.mkdir(parents=True)
    (out / "thesis.tex").write_text("years of work")
    tiny_cfg.overwrite = True
    with pytest.raises(OutputExistsError, match="no spinlora run"):
        run(tiny_cfg)
    assert (out / "thesis.tex").read_text() == "years of work"


def test_interrupt_keeps_finished_stages(tiny_cfg, monkeypatch):
    """Ctrl-C during evaluation: SFT and both SPIN iterations stay intact on disk."""
    import spinlora.pipeline as pl

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pl, "run_eval", boom)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg)
    out = Path(tiny_cfg.output_dir)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    for d in ("sft", "spin/iter_1", "spin/iter_2"):
        assert (out / d / "adapter" / "adapter_model.safetensors").is_file(), d
        assert (out / d / "result.json").is_file(), d
    assert (out / "eval.partial").is_dir() and not (out / "eval").exists()


def test_crash_mid_iteration_leaves_partial_not_final(tiny_cfg, monkeypatch):
    import spinlora.stages.spin as sp

    real = sp.reference_pass
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash in iteration 2")
        return real(*a, **k)

    monkeypatch.setattr(sp, "reference_pass", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        run(tiny_cfg)
    out = Path(tiny_cfg.output_dir)
    assert (out / "spin" / "iter_1" / "result.json").is_file()
    assert (out / "spin" / "iter_2.partial").is_dir() and not (out / "spin" / "iter_2").exists()
    status = json.loads((out / "run.json").read_text())
    assert status["status"] == "error" and "simulated" in status["error"]


def test_cli_reports_unknown_key_and_missing_model(capsys, tmp_path):
    assert cli.main(["run", "spin.iteratons=2", "--output-dir", str(tmp_path / "a")]) == 2
    assert "did you mean 'iterations'" in capsys.readouterr().err
    assert cli.main(["sft", "--model", str(tmp_path / "missing-model"),
                     "--output-dir", str(tmp_path / "b")]) == 2
    assert "not a local directory" in capsys.readouterr().err


def test_cli_missing_dataset_is_clear(capsys, tmp_path, tiny_model_dir):
    rc = cli.main(["sft", "--model", str(tiny_model_dir), "data.train=./missing/train.jsonl",
                   "--output-dir", str(tmp_path / "c")])
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_bad_eval_file_fails_before_any_training(tiny_cfg, tmp_path):
    from spinlora.data import DataError

    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\nnot json\n')
    tiny_cfg.data.eval = str(bad)
    with pytest.raises(DataError, match="broken.jsonl:2: malformed JSON"):
        run(tiny_cfg)
    out = Path(tiny_cfg.output_dir)
    assert not (out / "sft").exists() and not (out / "sft.partial").exists()


def test_empty_training_set_is_a_clear_error(tiny_cfg):
    from spinlora.data import DataError

    tiny_cfg.data.max_length, tiny_cfg.data.overlong = 12, "drop"  # every row is longer
    with pytest.raises(DataError, match="no example left to train on"):
        run(tiny_cfg)


def test_report_to_tensorboard_writes_events(tiny_cfg):
    """train.report_to=[tensorboard]: event files beside the JSONL, with the logged loss."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny_cfg.stages = ["sft"]
    tiny_cfg.train.report_to = ["tensorboard"]
    assert run(tiny_cfg)["status"] == "ok"
    tb = Path(tiny_cfg.output_dir) / "sft" / "tensorboard"
    ea = EventAccumulator(str(tb))
    ea.Reload()
    losses = [e.value for e in ea.Scalars("loss")]
    logged = [json.loads(x)["loss"] for x in (tb.parent / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(logged, rel=1e-6) and len(losses) == 3


def test_report_to_unknown_sink_is_refused():
    from spinlora.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="train.report_to"):
        load_config(None, ["train.report_to=[mlflow]"])


def test_adapter_from_a_run_with_other_settings_is_named(tiny_cfg, capsys):
    """--adapter from a run whose training settings differ from this run's: run.json records
    where it came from (its run, the sha256 of its weights, the differing keys) and a note names
    them; the same settings give no note; a bare peft folder records only path and hash."""
    import copy
    import hashlib
    import itertools
    import shutil

    tiny_cfg.stages = ["sft"]
    run(tiny_cfg)
    adapter = Path(tiny_cfg.output_dir) / "sft" / "adapter"
    weights = (adapter / "adapter_model.safetensors").read_bytes()

    calls = itertools.count()

    def eval_from(where, **changes):
        cfg = copy.deepcopy(tiny_cfg)
        cfg.stages, cfg.eval.models, cfg.sft_adapter = ["eval"], ["sft"], str(where)
        cfg.output_dir = str(Path(tiny_cfg.output_dir).parent / f"eval_{next(calls)}")
        for k, v in changes.items():
            setattr(cfg.train, k, v)
        capsys.readouterr()
        run(cfg)
        return (json.loads((Path(cfg.output_dir) / "run.json").read_text())["adapter_source"],
                capsys.readouterr().out)

    src, printed = eval_from(adapter, lr=3e-4)
    assert src["run"] == str(Path(tiny_cfg.output_dir).resolve())
    assert src["sha256"] == hashlib.sha256(weights).hexdigest()
    assert src["differs"] == {"train.lr": {"there": 1e-2, "here": 3e-4}}
    assert "train.lr 0.01 there, 0.0003 here" in printed
    src, printed = eval_from(adapter)
    assert src["differs"] == {} and "trained by the run" not in printed
    # an adapter trained on re-read prompts, evaluated on plain ones, is named; a run from
    # before data.reread existed (its config.yaml lacks the key) ran at the default, off
    recorded = Path(tiny_cfg.output_dir) / "config.yaml"
    saved = yaml.safe_load(recorded.read_text())
    saved["data"]["reread"] = True
    recorded.write_text(yaml.safe_dump(saved))
    src, printed = eval_from(adapter)
    assert src["differs"] == {"data.reread": {"there": True, "here": False}}
    del saved["data"]["reread"]
    recorded.write_text(yaml.safe_dump(saved))
    src, printed = eval_from(adapter)
    assert src["differs"] == {} and "trained by the run" not in printed
    bare = Path(tiny_cfg.output_dir).parent / "bare_adapter"
    shutil.copytree(adapter, bare)
    src, _ = eval_from(bare, lr=3e-4, epochs=2.0)
    assert set(src) == {"path", "sha256"}


def test_run_records_the_process_peak_over_every_phase(tiny_cfg, capsys):
    """run.json's process_peak_rss_bytes is at least every phase's own peak (the phase meters
    reset the kernel's count, which /usr/bin/time -v reads), and the run prints it."""
    tiny_cfg.stages = ["sft", "eval"]
    tiny_cfg.eval.models = ["base", "sft"]
    run(tiny_cfg)
    out = Path(tiny_cfg.output_dir)
    summary = json.loads((out / "run.json").read_text())
    peaks = [p["peak_bytes"] for stage in ("sft", "eval")
             for p in json.loads((out / stage / "result.json").read_text())
             .get("accounting", {}).get("phases", {}).values()]
    assert peaks and summary["process_peak_rss_bytes"] >= max(peaks)
    assert "peak RSS" in capsys.readouterr().out
    # a CPU run fixes glibc's mmap threshold before loading (test_accounting.py says why)
    assert summary["malloc_mmap_threshold"] == MMAP_THRESHOLD
