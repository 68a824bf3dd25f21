"""The README stays true to the code: every setting is in its configuration table."""

from __future__ import annotations

from pathlib import Path

from optimizely_odp_ext.settings import SETTINGS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_and_its_variable_and_default_are_documented() -> None:
    for setting in SETTINGS:
        row = next((line for line in README.splitlines() if line.startswith(f"| `{setting.name}` |")), None)
        assert row is not None, f"{setting.name} missing from the README configuration table"
        assert f"`{setting.env_var}`" in row
        assert f"| {setting.default} |" in row


def test_the_readme_names_the_quickstart_and_the_test_command() -> None:
    assert "examples/quickstart.py" in README
    assert "python -m pytest" in README
