"""What every run does before its stages, shared by the pipeline and the memory planner: the
SFT set (with the rows held out of it) and the adapter the stages train."""
from __future__ import annotations

from pathlib import Path

from . import adapters, dist
from .config import RunConfig
from .data import (ChatFormat, DataError, add_distractors, build_examples, conjoin_objects,
                   load_rows, reorder_statements, subset)


def _augment(cfg: RunConfig, original: list[dict], rows: list[dict], epoch: int = 0):
    """The SFT rows with ``data``'s variations drawn with epoch ``epoch``'s seeds (epoch 0: the
    data seed's own), and how many rows each changed."""
    seed = cfg.data.seed + 1000 * epoch
    picked, changed = add_distractors(original, rows, cfg.data.distractors, seed)
    picked, conjoined = conjoin_objects(picked, rows, cfg.data.conjoin, seed + 2,
                                        cfg.data.conjoin_before, cfg.data.conjoin_every,
                                        cfg.data.conjoin_ask, cfg.data.conjoin_both)
    # reordered after distractors are in, so an inserted statement can move too
    picked, moved = reorder_statements(picked, cfg.data.reorder, seed + 1)
    if cfg.data.augment == "add":  # the changed rows join their originals instead
        picked = original + [p for p, o in zip(picked, original) if p is not o]
    return picked, {"with_distractor": changed, "with_conjoined_object": conjoined,
                    "asking_the_added_object": sum(bool(p.get("asks_added")) for p in picked),
                    "asking_both_objects": sum(bool(p.get("asks_both")) for p in picked),
                    "reordered": moved}


def _counted(cfg: RunConfig, changes: dict) -> dict:
    on = {"with_distractor": cfg.data.distractors, "with_conjoined_object": cfg.data.conjoin,
          "asking_the_added_object": cfg.data.conjoin_ask,
          "asking_both_objects": cfg.data.conjoin_both,
          "reordered": cfg.data.reorder}
    return {k: v for k, v in changes.items() if on[k]}


def sft_rows(cfg: RunConfig):
    """The training split's rows, the indices of the SFT subset and of the rest (held-out rows
    come from there), the SFT rows with ``data``'s variations (before tokenizing) and how many
    rows each variation changed."""
    rows = load_rows(cfg.data.train, cfg.data, "train")
    chosen = subset(list(range(len(rows))), cfg.data.sft_examples, cfg.data.seed)
    rest = sorted(set(range(len(rows))) - set(chosen))
    picked, changes = _augment(cfg, [rows[i] for i in chosen], rows)
    return rows, chosen, rest, picked, changes


def sft_set(cfg: RunConfig, fmt: ChatFormat):
    """The training split's rows, the indices of the SFT subset and of the rest (held-out rows
    come from there), the SFT examples and their counts."""
    rows, chosen, rest, picked, changes = sft_rows(cfg)
    sft_examples, counts = build_examples(picked, fmt, cfg.data)
    counts.update(_counted(cfg, changes))
    return rows, chosen, rest, sft_examples, counts


def sft_epochs(cfg: RunConfig, fmt: ChatFormat, rows: list[dict], chosen: list[int], n: int):
    """With ``data.augment_each_epoch`` and a variation on: a function from an epoch (1, 2, …;
    0 is ``sft_set``'s, whose ``n`` examples every epoch must keep) to that epoch's SFT
    examples, the same rows in the same places with the variations drawn with the epoch's
    seeds. It keeps each epoch's counts in its ``drawn`` list. None otherwise."""
    if not (cfg.data.augment_each_epoch and (cfg.data.distractors or cfg.data.conjoin
                                             or cfg.data.reorder)):
        return None
    original = [rows[i] for i in chosen]

    def examples(epoch: int) -> list:
        picked, changes = _augment(cfg, original, rows, epoch)
        built, counts = build_examples(picked, fmt, cfg.data)
        if len(built) != n:
            raise DataError(
                f"data.augment_each_epoch: epoch {epoch + 1} keeps {len(built)} of the SFT rows, "
                f"the first epoch {n} ({counts['dropped_overlong']} dropped as longer "
                f"than data.max_length={cfg.data.max_length}); use data.overlong=truncate or "
                "raise data.max_length")
        examples.drawn.append({"epoch": epoch + 1, **_counted(cfg, changes)})
        return built

    examples.drawn = []
    return examples


def run_method(cfg: RunConfig) -> str:
    """The adapter method the run trains: ``--adapter``'s own, else ``adapter.method``. Read
    before the model loads (its dtype follows the method: ``adapters.model_config``); an
    unreadable ``--adapter`` is left for ``attach_adapter`` to refuse with its reason."""
    if cfg.sft_adapter:
        try:
            return adapters.saved_config(cfg.sft_adapter, cfg.adapter).method
        except (adapters.AdapterError, OSError, ValueError, TypeError, KeyError):
            return cfg.adapter.method
    return cfg.adapter.method


def model_to_load(cfg: RunConfig):
    """(the model config the run loads, the adapter method it trains or None). A run with a
    training stage loads the dtype its method needs (``adapters.model_config``); the run and
    its memory plan (``spinlora plan``) both load through here."""
    if not {"sft", "spin", "dpo", "rl"} & set(cfg.stages):
        return cfg.model, None
    method = run_method(cfg)
    return adapters.model_config(cfg.model, method), method


def attach_adapter(cfg: RunConfig, model, out: Path):
    """The adapter the stages train: fresh, or ``cfg.sft_adapter`` to continue from (its own
    method and shapes). Returns (model, init_path): where a PiSSA-style method saved the state
    it starts from, else None."""
    init_path = None
    if cfg.sft_adapter:
        cfg.adapter = adapters.saved_config(cfg.sft_adapter, cfg.adapter)
    if cfg.sft_adapter and not adapters.get(cfg.adapter.method).base_from_init:
        model = adapters.load(model, cfg.sft_adapter, trainable=True,  # a peft folder
                               fused=cfg.adapter.fused)
    else:
        model = adapters.attach(model, cfg.adapter)
        if adapters.get(cfg.adapter.method).base_from_init:
            # the state the method starts from gives the base model's output for evaluation
            # (and the conversion of PiSSA-style adapters to plain LoRA on the original base)
            init_path = out / "init_adapter"
            adapters.save(model, cfg.adapter, init_path)
            dist.barrier()  # the other processes read it at evaluation
        if cfg.sft_adapter:
            adapters.load_weights(model, cfg.adapter, cfg.sft_adapter)
    return model, init_path


# the settings that shape what an adapter learned in the run that trained it: ``--adapter``
# from a run whose values differ is named (a stale adapter under a current-looking folder name)
PROVENANCE_KEYS = ("model.name", "data.train", "data.sft_examples", "data.seed",
                   "data.max_length", "data.reread", "data.question_first",
                   "train.lr", "train.epochs",
                   "train.batch_size", "seed")
_ABSENT = object()


def setting(cfg, dotted: str):
    """``dotted``'s value in a config (a RunConfig, or a run's config.yaml as a dict). A key an
    older run's config.yaml lacks was run at today's default (the key came later)."""
    node = cfg
    for part in dotted.split("."):
        node = node.get(part, _ABSENT) if isinstance(node, dict) else getattr(node, part, None)
        if node is _ABSENT:
            return setting(RunConfig(), dotted)
    return node


def _same(a, b) -> bool:
    try:  # YAML reads "5e-4" as a string and "5.0e-4" as a number
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def writing_run(folder: Path) -> tuple[Path, dict, dict] | None:
    """The spinlora run that wrote ``folder`` (an adapter or a reward model): the nearest folder
    above it with ``run.json`` and ``config.yaml``, as (its path, its config.yaml, its run.json).
    None when there is none, or when either file is damaged: such a record says nothing, and
    the folder itself is what loads."""
    import json

    import yaml

    run = next((p for p in list(Path(folder).resolve().parents)[:4]
                if (p / "run.json").is_file() and (p / "config.yaml").is_file()), None)
    if run is None:
        return None
    try:
        there = yaml.safe_load((run / "config.yaml").read_text()) or {}
        status = json.loads((run / "run.json").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return run, (there if isinstance(there, dict) else {}), status


def trained_chat(folder: Path) -> tuple[Path, dict] | None:
    """The chat settings (``data.CHAT_KEYS``) of the run that wrote ``folder``
    (``writing_run``), as (that run, {key: value}); None without such a run."""
    from .data import CHAT_KEYS

    found = writing_run(folder)
    if found is None:
        return None
    return found[0], {k: setting(found[1], f"data.{k}") for k in CHAT_KEYS}


def adapter_source(cfg: RunConfig) -> dict | None:
    """Where ``--adapter`` (``cfg.sft_adapter``) came from, for ``run.json``: its path, the
    sha256 of its weights, and, when a spinlora run wrote it (the nearest folder above it with
    ``run.json`` and ``config.yaml``), that run, its commit and the ``PROVENANCE_KEYS`` whose
    values there differ from this run's (printed as a note). None without ``--adapter`` or when
    the folder is missing (loading the adapter then fails with its own message)."""
    import hashlib

    path = Path(cfg.sft_adapter).expanduser().resolve() if cfg.sft_adapter else None
    if path is None or not path.is_dir():
        return None
    rec: dict = {"path": str(path)}
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
        rec["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    found = writing_run(path)
    if found is None:
        return rec
    run, there, status = found
    rec["run"] = str(run)
    rec["git_commit"] = (status.get("environment") or {}).get("git_commit")
    rec["differs"] = {k: {"there": setting(there, k), "here": setting(cfg, k)}
                      for k in PROVENANCE_KEYS
                      if not _same(setting(there, k), setting(cfg, k))}
    if rec["differs"] and dist.is_main():
        diffs = "; ".join(f"{k} {v['there']} there, {v['here']} here"
                          for k, v in rec["differs"].items())
        print(f"[spinlora] note: --adapter {cfg.sft_adapter} was trained by the run {run} "
              f"(commit {str(rec['git_commit'])[:7]}) with settings other than this run's: "
              f"{diffs}. It is used as it is; if you meant this recipe's own adapter, train "
              "it again (its command without --adapter)")
    return rec
