"""The docs stay true to the code: links resolve, settings named exist, the README stays a
front page."""

from __future__ import annotations

import re
from pathlib import Path

from stream.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
SETTING = re.compile(r"LAMSTREAM_[A-Z0-9_]+[A-Z0-9]")


def test_the_pages_the_readme_promises_exist() -> None:
    for name in ("architecture", "topics", "settings", "cli", "operations"):
        assert (REPO / "docs" / f"{name}.md").is_file(), name


def test_every_relative_link_resolves() -> None:
    broken = []
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_every_setting_named_in_the_docs_exists() -> None:
    valid = {f"LAMSTREAM_{name.upper()}" for name in Settings.model_fields}
    unknown = set()
    for page in PAGES:
        for name in SETTING.findall(page.read_text()):
            # "LAMSTREAM_TRAINER_RISK_MIN_POSITIVES / _MIN_NEGATIVES" style prefixes are fine
            if name not in valid and not any(v.startswith(name) for v in valid):
                unknown.add(f"{page.relative_to(REPO)}: {name}")
    assert not unknown, sorted(unknown)


def test_the_readme_is_a_front_page() -> None:
    assert len((REPO / "README.md").read_bytes()) <= 12_000
