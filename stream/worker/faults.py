"""Test-only fault injection: kill the worker at a named step of its batches, deterministically.

`LAMSTREAM_TEST_FAULT_AT=<step>:<n>` (tests only, never set in production; like the feedback
join's LAMSTREAM_TEST_CRASH_AFTER_EMIT it is no setting) makes the worker `os._exit(137)` the
n-th time it reaches `step`, after waiting for the broker's ack of what that step sent, so
the broker holds exactly what a crash at that point leaves:

- `changelog`: a record batch of the state changelog is acknowledged;
- `outputs`: a record batch of recommendations / decisions / risk alerts is acknowledged,
  before the batch's other output record batches are sent;
- `ack`: the batch is published and stored, its input records are not acked yet.

tests/integration/test_fault_injection.py kills the worker at each and checks the output
guarantee of docs/topics.md.
"""

from __future__ import annotations

import logging
import os
import sys

from stream.errors import SettingsError

log = logging.getLogger(__name__)

ENV = "LAMSTREAM_TEST_FAULT_AT"
STEPS = ("changelog", "outputs", "ack")


class FaultPoint:
    """Counts how often each step is reached; `reached(step)` is True at the planned one."""

    def __init__(self, step: str, n: int) -> None:
        if step not in STEPS or n < 1:
            raise SettingsError(f"{ENV}={step}:{n}: want one of {', '.join(STEPS)} and n >= 1")
        self.step = step
        self.n = n
        self._seen = 0

    @classmethod
    def from_env(cls) -> FaultPoint | None:
        raw = os.environ.get(ENV)
        if not raw:
            return None
        step, _, n = raw.partition(":")
        try:
            return cls(step, int(n or "1"))
        except ValueError as exc:
            raise SettingsError(f"{ENV}={raw!r}: want <step>:<n>") from exc

    def reached(self, step: str) -> bool:
        if step != self.step:
            return False
        self._seen += 1
        return self._seen == self.n

    def die(self) -> None:
        log.warning("%s: killing the worker at %s #%d", ENV, self.step, self.n)
        sys.stderr.flush()
        os._exit(137)
