"""The README and the packaging metadata stay true to each other and to the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from optimizely_odp_ext.metrics import schema

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the check needs to run on one version only


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())  # type: ignore[no-any-return]


def test_every_extra_is_in_the_readme_extras_table() -> None:
    extras = pyproject()["project"]["optional-dependencies"]  # type: ignore[index]
    rows = {m.group(1) for m in re.finditer(r"^\| `([a-z]+)` \|", README, re.MULTILINE)}
    assert {"prometheus", "otel"} <= set(extras)
    assert set(extras) - {"bench"} <= rows, "an extra is missing from the README's table"


def test_the_license_file_is_apache_2_and_the_metadata_says_so() -> None:
    project = pyproject()["project"]
    assert project["license"] == "Apache-2.0"  # type: ignore[index]
    assert project["license-files"] == ["LICENSE"]  # type: ignore[index]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text, "the full text, not a summary"


def test_every_prometheus_metric_name_is_in_the_readme() -> None:
    for spec in schema.ALL:
        if spec.name.startswith("odp_destination_"):
            continue  # documented as a family: odp_destination_*{host}
        unit = f"_{spec.unit.prometheus}" if spec.unit.prometheus else ""
        suffix = "_total" if spec.kind is schema.Kind.COUNTER else ""
        name = spec.name + ("" if spec.name.endswith(unit) else unit) + suffix
        assert f"`{name}" in README, name
        assert f"`{spec.otel_name}`" in README, spec.otel_name
