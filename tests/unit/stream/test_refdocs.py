"""The generated references (docs/settings.md, docs/cli.md) are what the code generates now."""

from __future__ import annotations

import pytest

from stream.cli.refdocs import cli_md, references, settings_md
from stream.settings import SECTIONS, Settings


@pytest.mark.parametrize("name", ["settings.md", "cli.md"])
def test_the_generated_reference_is_up_to_date(name: str) -> None:
    path, text = next((p, t) for p, t in references().items() if p.name == name)
    assert path.exists(), f"{path} is missing: run `make docs`"
    assert path.read_text() == text, f"{path} is stale: run `make docs` and commit it"


def test_the_settings_reference_names_every_variable_in_its_section() -> None:
    text = settings_md()
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert headings == list(SECTIONS)
    for name, field in Settings.model_fields.items():
        row = next(line for line in text.splitlines()
                   if line.startswith(f"| `LAMSTREAM_{name.upper()}` |"))
        assert " ".join((field.description or "").split())[:40] in row
    broker = text.split("## broker")[1].split("## topics")[0]
    assert "| `LAMSTREAM_PARTITIONS`" not in broker and "`LAMSTREAM_SASL_PASSWORD`" in broker
    assert "| `LAMSTREAM_PARTITIONS` | integer, >= 1, <= 1024 | `8` |" in text
    assert "| `LAMSTREAM_WINDOWS_S` | comma-separated list of integer | `60,3600,86400` |" in text


def test_the_cli_reference_has_the_help_of_every_command_uncoloured() -> None:
    text = cli_md()
    for command in ("lamstream", "lamstream worker", "lamstream topics list",
                    "lamstream bench inference", "lamstream evaluate policy",
                    "lamstream export stats", "lamstream model gate"):
        assert f"\n## {command}\n" in text
        assert f"Usage: {command} [OPTIONS]" in text
    assert "\x1b[" not in text  # no colour codes
    assert max(len(line) for line in text.splitlines() if line.startswith("│")) == 100
