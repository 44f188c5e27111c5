"""The documentation site builds with ``mkdocs build --strict`` (no broken page or link), every
page is in the navigation, and the README stays a newcomer's page (under 200 lines)."""
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                        "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "site" / "svamp" / "index.html").is_file()


def test_every_page_is_in_the_navigation():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    listed = {next(iter(item.values())) for item in nav}
    assert listed == {p.name for p in (ROOT / "docs").glob("*.md")}


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) < 200
