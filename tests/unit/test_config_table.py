"""The README's configuration table is the generator's output, not written by hand."""

from __future__ import annotations

from pathlib import Path

from raypipe import config_table
from raypipe.config import FLAT_NAMES, GROUPS, Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_what_the_generator_writes() -> None:
    text = README.read_text()
    assert config_table.replaced(text) == text, (
        "README.md's settings table is out of date: run"
        " `python -m raypipe.config_table --write README.md`"
    )


def test_every_setting_has_a_row_with_a_description() -> None:
    table = config_table.markdown()
    top = [name for name in Settings.model_fields if name not in GROUPS]
    for flat in [*top, *FLAT_NAMES]:
        assert f"| `RAYPIPE_{flat.upper()}` | " in table, flat
    for line in table.splitlines():
        if line.startswith("| `RAYPIPE_"):
            assert not line.endswith("|  |"), line
