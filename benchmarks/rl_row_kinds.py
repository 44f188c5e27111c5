"""An RL run's sampled reward by the kind of prompt row, round by round.

    python benchmarks/rl_row_kinds.py RUN [RUN ...]

``RUN`` is an RL run folder (``spinlora rl … --output-dir RUN``), or a results folder that
keeps its ``config.yaml`` and ``rl_rounds.jsonl`` (``benchmarks/results/svamp_s61/B1``). The
config's data settings build the SFT rows again as the run built them (``start.sft_rows``);
the rounds give each round's drawn rows (``sft_rows``, places in those rows) with their mean
reward over the group (``sft_row_rewards``). Each drawn row is sorted by what the data
variations made of it:

- ``asks both``: a conjoined object, the question asking about both objects (every number counts);
- ``asks added``: the question asking about the added object (the original's numbers left out);
- ``conjoined``: an object added beside the asked one, the original question (its number left out);
- ``other varied``: another variation (distractor, order); ``plain``: no variation.

A reward that rises on one kind and not on another shows what the policy learns from its pool
(docs/svamp.md, session 61).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from spinlora.config import config_from_dict  # noqa: E402
from spinlora.data import VARIED_KEYS  # noqa: E402
from spinlora.start import sft_rows  # noqa: E402

KINDS = ("asks both", "asks added", "conjoined", "other varied", "plain")


def kind(row: dict) -> str:
    """What the data variations made of an SFT row: the keys they add (``asks_both``,
    ``asks_added``, ``data.VARIED_KEYS``, whose presence is what makes a row varied for
    ``prompt_pool``)."""
    if row.get("asks_both"):
        return "asks both"
    if row.get("asks_added"):
        return "asks added"
    if "conjoined" in row:
        return "conjoined"
    if any(k in row for k in VARIED_KEYS):
        return "other varied"
    return "plain"


def table(run: Path) -> str:
    cfg = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    # the places count the rows the run kept: with overlong=drop (or a prompt longer than
    # data.max_length by itself, which the run's "SFT set: … dropped" line counts) they shift
    if cfg.data.overlong == "drop":
        raise ValueError(f"{run}: data.overlong=drop; the rows it dropped shift the places")
    rows = sft_rows(cfg)[3]
    lines = [f"## {run}", "", "| round | " + " | ".join(KINDS) + " |",
             "|---|" + "---|" * len(KINDS)]
    rounds = run / "rl" / "rounds.jsonl"
    if not rounds.is_file():  # a results folder keeps it beside config.yaml
        rounds = run / "rl_rounds.jsonl"
    for line in rounds.read_text().splitlines():
        rec = json.loads(line)
        if "sft_row_rewards" not in rec:
            raise ValueError(f"{run}: its rounds keep no per-row rewards (kept since session 60)")
        if max(rec["sft_rows"]) >= len(rows):
            raise ValueError(f"{run}: a drawn row lies past the {len(rows)} SFT rows rebuilt from "
                             "its config.yaml: not the config the run trained with")
        got: dict[str, list[float]] = {k: [] for k in KINDS}
        for i, r in zip(rec["sft_rows"], rec["sft_row_rewards"]):
            got[kind(rows[i])].append(r)
        cells = [f"{sum(v) / len(v):.3f} ({len(v)})" if v else "–" for v in got.values()]
        lines.append(f"| {rec['round']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args(argv)
    print("mean reward (rows drawn) by the kind of prompt row\n")
    failed = False
    for run in args.runs:
        try:
            print(table(run) + "\n")
        except (ValueError, OSError) as e:  # one run's missing record does not hide the others
            print(f"{e}\n", file=sys.stderr)
            failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
