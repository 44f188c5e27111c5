"""Every spinlora command line shown in the README and the docs parses (overrides anywhere on
the line)."""
import re
import shlex
from pathlib import Path

import pytest

from spinlora import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def readme_commands() -> list[str]:
    lines = []
    text = "\n".join(p.read_text() for p in PAGES)
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():  # a command over several lines
            line = line.split("  #")[0].strip()
            if " -m spinlora " in line:  # torchrun / accelerate launch ... -m spinlora ARGS
                line = "spinlora " + line.split(" -m spinlora ", 1)[1]
            if line.startswith("spinlora "):
                lines.append(line)
    return lines


def test_readme_has_commands():
    assert len(readme_commands()) >= 8


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_parses(line):
    args = cli.parse(shlex.split(line)[1:])
    taken = args.terms if args.command == "combine" else getattr(args, "overrides", [])
    for token in shlex.split(line)[2:]:
        if "=" in token and not token.startswith("-"):
            assert token in taken, f"{token} was not taken as an override"


def test_unknown_option_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.parse(["run", "configs/demo.yaml", "--bogus"])
    assert "--bogus" in capsys.readouterr().err


def test_run_keeps_the_recipes_stages(tmp_path):
    """``spinlora run`` runs the stages the recipe names (it once forced sft, spin, eval on every
    recipe: a stages: [eval] recipe trained two models first); single-stage commands and
    command-line overrides still set them."""
    from spinlora.config import load_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages: [sft, rl, eval]\n")
    cfg = load_config(recipe, cli.config_overrides(cli.parse(["run", str(recipe)])))
    assert cfg.stages == ["sft", "rl", "eval"]
    cfg = load_config(None, cli.config_overrides(cli.parse(["run"])))
    assert cfg.stages == ["sft", "spin", "eval"]  # no recipe: the default pipeline
    args = cli.parse(["eval", str(recipe), "--output-dir", "o", "--resume"])
    cfg = load_config(recipe, cli.config_overrides(args))
    assert (cfg.stages, cfg.output_dir, cfg.resume) == (["eval"], "o", True)
    args = cli.parse(["run", str(recipe), "stages=[sft,eval]"])
    assert load_config(recipe, cli.config_overrides(args)).stages == ["sft", "eval"]
