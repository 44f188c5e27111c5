"""The run folder: one module creates, locks, refuses, resumes and finishes it; stages call into it.

    out = rundir.prepare(cfg)             # lock; a new folder, --overwrite (of a run only), --resume
    rundir.commit(out)                    # inputs checked: an old run moved aside is removed now
    if not rundir.finished(out / "sft"):  # its result.json exists only once the stage is done
        part = rundir.begin(out / "sft")  # sft.partial, emptied: an interrupted attempt is redone
        ...                               # the stage writes into part
        rundir.finish(part, result)       # result.json, then sft.partial -> sft (one rename)
    rundir.release(out)                   # (or the process ends: the lock goes with it)

A folder has its final name only when complete, so a killed run never leaves a half-written
stage that looks finished. Launched with several processes (``dist``), only the main process
writes; ``prepare`` and ``finish`` end with a barrier, so the others read finished folders.

- **Lock.** A run holds ``flock`` on ``.<folder>.lock`` beside its folder for its whole life: a
  second run, ``--resume`` or ``--overwrite`` on a folder a live process holds is refused with
  that process's id. The kernel drops the lock when its process dies (``kill -9`` included), so
  a lock left by a killed run is stale by construction and taken over, with a message.
- **What counts as a run.** Only a folder whose ``run.json`` carries spinlora's marker
  (``"spinlora_run": 1``); ``--overwrite`` never touches anything else.
- **Overwrite.** The old run is moved aside (``.<folder>.replaced``) and removed only once the new
  run has read its config, data and model (``commit``); a new run that fails before that
  (``abandon``) leaves the old one back in place, bitwise, and no half-made folder.
- **Identity.** ``config.yaml`` is the recipe as resolved, without the command line's flags
  (``resume``, ``overwrite``); ``--resume`` compares it without ``output_dir``, so a moved or
  copied run folder resumes, and reads a key it lacks (an older spinlora's) as the default.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from pathlib import Path

import yaml

from . import dist
from .config import ConfigError, RunConfig, config_to_dict

MARKER = "spinlora_run"  # run.json[MARKER] == 1: this folder is a spinlora run
FLAGS = ("resume", "overwrite")  # command-line flags: not part of a run's recipe
_held: dict[Path, int] = {}  # folder -> file descriptor of its lock, while this process runs it
_aside: dict[Path, Path] = {}  # folder -> where its replaced run waits until commit
_new: set[Path] = set()  # folders this process created and has not committed yet


class OutputExistsError(ConfigError):
    """The output folder already holds a run, or something that is not a run."""


class RunLockedError(ConfigError):
    """Another live process holds the run folder."""


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def lock(out: Path) -> None:
    """Hold the folder's lock for this process (refuse if a live process holds it)."""
    out = out.resolve()
    if out in _held or not dist.is_main():
        return
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise RunLockedError(f"output folder {out} is in use by a running spinlora process "
                             f"(pid {holder.split()[0]}); wait for it to end, stop it, or "
                             "choose another --output-dir") from None
    old = os.read(fd, 200).decode(errors="replace").split()
    if old and old[0].isdigit() and int(old[0]) != os.getpid():
        print(f"[spinlora] {out}: the run of process {old[0]} ended without releasing its lock "
              "(killed?); taking it over")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
    _held[out] = fd


def release(out: Path) -> None:
    """Give the lock back (the run is over)."""
    fd = _held.pop(Path(out).resolve(), None)
    if fd is not None:
        os.ftruncate(fd, 0)
        os.close(fd)


def is_run(out: Path) -> bool:
    """The folder holds a spinlora run: its run.json carries the marker."""
    return read_status(out).get(MARKER) == 1


def recipe(cfg: RunConfig) -> dict:
    """The resolved config as a recipe: without the command-line flags."""
    d = config_to_dict(cfg)
    for k in FLAGS:
        d.pop(k, None)
    return d


def save_recipe(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(recipe(cfg), sort_keys=False))


def prepare(cfg: RunConfig) -> Path:
    """Lock the run folder, then create it and write the recipe into it (``config.yaml``);
    refuse to reuse one that holds a run unless ``cfg.overwrite`` (the old run is moved aside
    until ``commit``), and never replace a folder that holds no spinlora run. With
    ``cfg.resume``, check that the folder holds a run of the same recipe and keep it."""
    out = Path(cfg.output_dir)
    lock(out)
    if cfg.resume:
        if not is_run(out) or not (out / "config.yaml").is_file():
            raise ConfigError(f"--resume: {out} holds no spinlora run to continue (no run.json "
                              "written by spinlora); start it without --resume")
        saved = _flat(yaml.safe_load((out / "config.yaml").read_text()) or {})
        now = _flat(config_to_dict(cfg))
        ignore = (*FLAGS, "output_dir")  # a moved or copied run resumes where it now lies
        # a key the run's config.yaml lacks (written by a spinlora before that option) ran at
        # the option's default
        default = _flat(config_to_dict(RunConfig()))
        differ = sorted(k for k in set(saved) | set(now) if k not in ignore
                        and saved.get(k, default.get(k)) != now.get(k))
        if differ:
            raise ConfigError(f"--resume: the config differs from the run's own in {differ}; "
                              "resume with the same config, or start a new run")
        if dist.is_main():
            save_recipe(cfg, out / "config.yaml")
        return out
    if out.exists() and any(out.iterdir()):
        if not is_run(out):
            # --overwrite replaces a spinlora run, never an arbitrary folder (--output-dir ~)
            raise OutputExistsError(
                f"output folder {out} is not empty and holds no spinlora run (no run.json "
                "written by spinlora); choose an empty or new folder with --output-dir")
        if not cfg.overwrite:
            raise OutputExistsError(
                f"output folder {out} already holds a run; pass --overwrite (overwrite=true) to "
                "replace it, or choose another with --output-dir")
    dist.barrier()  # every process has checked the folder as it was
    if dist.is_main():
        if out.exists() and any(out.iterdir()):
            aside = out.parent / f".{out.name}.replaced"
            shutil.rmtree(aside, ignore_errors=True)  # a leftover of a crashed overwrite
            out.rename(aside)
            _aside[out.resolve()] = aside
        elif out.exists():
            out.rmdir()
        out.mkdir(parents=True)
        _new.add(out.resolve())
        save_recipe(cfg, out / "config.yaml")
    dist.barrier()
    return out


def commit(out: Path) -> None:
    """The new run has read its config, data and model: the run it replaces is removed now."""
    key = Path(out).resolve()
    _new.discard(key)
    aside = _aside.pop(key, None)
    if aside is not None and dist.is_main():
        shutil.rmtree(aside, ignore_errors=True)


def abandon(out: Path) -> bool:
    """The new run failed before ``commit``: remove what it made and put back the run it was
    to replace. True when the folder is gone or restored (nothing of the new run is left)."""
    key = Path(out).resolve()
    if key not in _new or not dist.is_main():
        return False
    _new.discard(key)
    shutil.rmtree(out, ignore_errors=True)
    aside = _aside.pop(key, None)
    if aside is not None:
        aside.rename(out)
    return True


def read_status(out: Path) -> dict:
    """The run.json a run left (empty when there is none or it cannot be read)."""
    try:
        status = json.loads((Path(out) / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


def held_by_live_process(out: Path) -> bool:
    """Whether a live process holds the folder's lock (this one included)."""
    out = Path(out).resolve()
    if out in _held:
        return True
    try:
        fd = os.open(lock_path(out), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock this call took
    return False


def state(out: Path) -> str | None:
    """The run's status as run.json records it (ok, running, interrupted, error, oom, diverged),
    with ``killed`` for a run that says it is running while no live process holds its lock: its
    process died without writing its end (a signal inside a C library, the machine's end). None
    for a folder that holds no run."""
    status = read_status(out)
    if status.get(MARKER) != 1:
        return None
    recorded = status.get("status")
    if recorded == "running" and not held_by_live_process(out):
        return "killed"
    return recorded


RESUME_HINT = ("`spinlora run CONFIG --output-dir {run} --resume` continues it from its "
               "finished stages")


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


def finish(part: Path, result: dict, name: str = "result.json") -> Path:
    """Write ``result`` as ``name`` into ``part`` and move it to its final name (one rename on
    one filesystem, replacing an older copy)."""
    final = part.with_name(part.name.removesuffix(".partial"))
    if dist.is_main():
        write_json(part / name, result)
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
