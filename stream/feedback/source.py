"""Feedback records for offline commands, from a JSONL file or a topic read from the start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from stream.settings import load_settings
from stream.topics import full_topic_name


def load_feedback(source: str) -> list[dict[str, Any]]:
    """Feedback records from a JSONL file (records, or `lamstream tail` lines) or a topic."""
    return [r for r in _load(source) if "rec_id" in r]


def load_risk_feedback(source: str) -> list[dict[str, Any]]:
    """Risk-feedback records (labelled scored events) from a JSONL file or a topic."""
    from model.train.risk_data import risk_records  # torch: not for the CLI's --help

    return risk_records(_load(source))


def _load(source: str) -> list[dict[str, Any]]:
    path = Path(source)
    rows: list[Any]
    if path.is_file():
        rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    else:
        from stream.client import tail  # kafka: not for the CLI's --help

        settings = load_settings()
        topic = full_topic_name(settings, source)
        rows = [v for _, v in tail(settings, topic, from_beginning=True, timeout=3.0)]
    out = [r["value"] if isinstance(r, dict) and "value" in r and "key" in r else r
           for r in rows]
    return [r for r in out if isinstance(r, dict)]
