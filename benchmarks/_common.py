"""What every benchmark script does last: print its result as JSON and write it to ``--out``."""
from __future__ import annotations

import json
from pathlib import Path


def emit(result: dict, out: str | None, echo: bool = True) -> None:
    text = json.dumps(result, indent=2)
    if echo:
        print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
