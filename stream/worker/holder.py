"""The predictor in service, and the one offered to replace it between two batches."""

from __future__ import annotations

import threading

from model.predictor import Predictor


class PredictorHolder:
    """The predictor in service; a new one is swapped in between batches, never within."""

    def __init__(self, predictor: Predictor) -> None:
        self.current = predictor
        self._next: Predictor | None = None

    @property
    def pending(self) -> Predictor | None:
        """The predictor offered and loaded, waiting for the next batch to serve."""
        return self._next

    def offer(self, predictor: Predictor) -> None:
        replaced, self._next = self._next, predictor
        if replaced is not None and replaced is not predictor:
            _close_later(replaced)  # superseded before it ever served

    def swap_if_offered(self) -> bool:
        """Called between batches only, so the old predictor has nothing in flight."""
        if self._next is None:
            return False
        old, self.current, self._next = self.current, self._next, None
        if old is not self.current:
            _close_later(old)
        return True


def _close_later(predictor: Predictor) -> None:
    """Release a retired predictor's resources (its batcher thread) off the event loop."""
    close = getattr(predictor, "close", None)
    if callable(close):
        threading.Thread(target=close, name="close-predictor", daemon=True).start()
