"""The test-only fault hook: parsed from its variable, fires once at the planned occurrence."""

from __future__ import annotations

import pytest

from stream.errors import SettingsError
from stream.worker.faults import ENV, FaultPoint


def test_fires_at_the_nth_occurrence_of_its_step_only() -> None:
    fault = FaultPoint("outputs", 2)
    assert [fault.reached(s) for s in ("outputs", "changelog", "ack", "outputs", "outputs")
            ] == [False, False, False, True, False]


def test_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert FaultPoint.from_env() is None
    monkeypatch.setenv(ENV, "ack:3")
    fault = FaultPoint.from_env()
    assert fault is not None and (fault.step, fault.n) == ("ack", 3)
    for bad in ("teleport:1", "ack:x", "ack:0"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(SettingsError):
            FaultPoint.from_env()
