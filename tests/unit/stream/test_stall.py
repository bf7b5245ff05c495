"""The worker's /health says `stalled` when events wait and no batch was processed for long."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest

from stream.settings import Settings
from stream.worker import reports


def _worker(last_batch_ago: float | None, started_ago: float = 600.0) -> Any:
    now = time.time()
    stats = SimpleNamespace(last_batch_at=None if last_batch_ago is None else now - last_batch_ago)
    ingest = SimpleNamespace(stats=stats, started_at=now - started_ago)
    return SimpleNamespace(ingest=ingest, settings=Settings(stall_after_s=60.0))


@pytest.mark.parametrize(("last_batch_ago", "lag", "stalled"), [
    (5.0, {"0": 100}, False),     # busy: processed recently
    (120.0, {"0": 0, "1": 0}, False),  # idle because nothing waits
    (120.0, {"0": 0, "1": 3}, True),   # events wait, nothing processed for two minutes
    (None, {"0": 3}, True),        # never processed since a start ten minutes ago
])
def test_stalled_only_when_events_wait_and_nothing_is_processed(
        monkeypatch: pytest.MonkeyPatch, last_batch_ago: float | None, lag: dict[str, int],
        stalled: bool) -> None:
    monkeypatch.setattr(reports, "update_lag", lambda _worker: lag)
    got = reports.stalled_for(_worker(last_batch_ago))
    assert (got is not None) is stalled
    if stalled:
        assert got is not None and got > 60.0


def test_a_fresh_worker_is_not_stalled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reports, "update_lag", lambda _worker: {"0": 50})
    assert reports.stalled_for(_worker(None, started_ago=10.0)) is None
