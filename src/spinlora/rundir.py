"""The run folder: one module creates, refuses, resumes and finishes it; stages call into it.

    out = rundir.prepare(cfg)             # a new folder, --overwrite (of a run only), --resume
    if not rundir.finished(out / "sft"):  # its result.json exists only once the stage is done
        part = rundir.begin(out / "sft")  # sft.partial, emptied: an interrupted attempt is redone
        ...                               # the stage writes into part
        rundir.finish(part, result)       # result.json, then sft.partial -> sft (one rename)

A folder has its final name only when complete, so a killed run never leaves a half-written
stage that looks finished. Launched with several processes (``dist``), only the main process
writes; ``prepare`` and ``finish`` end with a barrier, so the others read finished folders.
``run.json`` (the run's status) marks a folder as a spinlora run; ``config.yaml`` holds its
resolved config, which ``--resume`` must match.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from . import dist
from .config import ConfigError, RunConfig, config_to_dict, save_config


class OutputExistsError(ConfigError):
    """The output folder already holds a run, or something that is not a run."""


def prepare(cfg: RunConfig) -> Path:
    """Create the run folder and write the resolved config into it (``config.yaml``); refuse to
    reuse one that holds a run unless ``cfg.overwrite``, and never replace a folder that holds
    no run. With ``cfg.resume``, check that the folder holds a run of the same config and keep
    it as it is."""
    out = Path(cfg.output_dir)
    if cfg.resume:
        if not (out / "run.json").is_file() or not (out / "config.yaml").is_file():
            raise ConfigError(f"--resume: {out} holds no spinlora run to continue (no run.json); "
                              "start it without --resume")
        saved = _flat(yaml.safe_load((out / "config.yaml").read_text()) or {})
        now = _flat(config_to_dict(cfg))
        differ = sorted(k for k in set(saved) | set(now) if k not in ("resume", "overwrite")
                        and saved.get(k) != now.get(k))
        if differ:
            raise ConfigError(f"--resume: the config differs from the run's own in {differ}; "
                              "resume with the same config, or start a new run")
        if dist.is_main():
            save_config(cfg, out / "config.yaml")
        return out
    if out.exists() and any(out.iterdir()):
        if not (out / "run.json").is_file():
            # --overwrite replaces a spinlora run, never an arbitrary folder (--output-dir ~)
            raise OutputExistsError(
                f"output folder {out} is not empty and holds no spinlora run (no run.json); "
                "choose an empty or new folder with --output-dir")
        if not cfg.overwrite:
            raise OutputExistsError(
                f"output folder {out} already holds a run; pass --overwrite (overwrite=true) to "
                "replace it, or choose another with --output-dir")
    dist.barrier()  # every process has checked the folder as it was
    if dist.is_main():
        if out.exists() and any(out.iterdir()):
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    dist.barrier()
    return out


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def partial(final: Path) -> Path:
    return final.with_name(final.name + ".partial")


def finished(final: Path) -> bool:
    """The stage or iteration ``final`` completed (its result.json is written last)."""
    return (final / "result.json").is_file()


def begin(final: Path, keep: bool = False) -> Path:
    """The ``.partial`` folder to build ``final`` in: emptied, or with ``keep`` left as an
    interrupted attempt wrote it (evaluation keeps the models it finished)."""
    part = partial(final)
    if dist.is_main():
        if not keep:
            shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True, exist_ok=True)
    return part


def finish(part: Path, result: dict) -> Path:
    """Write ``result.json`` into ``part`` and move it to its final name (one rename on one
    filesystem, replacing an older copy)."""
    final = part.with_name(part.name.removesuffix(".partial"))
    if dist.is_main():
        write_json(part / "result.json", result)
        if final.exists():
            shutil.rmtree(final)
        part.rename(final)
    dist.barrier()
    return final


def write_json(path: Path, data: dict) -> None:
    """Write a JSON file so that a kill leaves the old file or the new one, never half of one
    (the main process only)."""
    if not dist.is_main():
        return
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)
