"""Every spinlora command line shown in the README parses (overrides anywhere on the line)."""
import re
import shlex
from pathlib import Path

import pytest

from spinlora import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.splitlines():
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
    for token in shlex.split(line)[2:]:
        if "=" in token and not token.startswith("-"):
            assert token in args.overrides, f"{token} was not taken as an override"


def test_unknown_option_is_refused(capsys):
    with pytest.raises(SystemExit):
        cli.parse(["run", "configs/demo.yaml", "--bogus"])
    assert "--bogus" in capsys.readouterr().err
