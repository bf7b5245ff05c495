"""The seam between the stream and the models: the Predictor protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from model.types import Prediction, PredictionContext

__all__ = ["Predictor", "Wrapper", "keeps_seq_state"]


@runtime_checkable
class Predictor(Protocol):
    """What the worker calls, once per micro-batch, from a thread off the event loop.

    predict_batch returns one Prediction per context, in order. learn_batch lets a model learn
    online from the same contexts after they were predicted (a no-op for frozen models).
    Both are called from one thread at a time.
    """

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def predict_batch(self, contexts: Sequence[PredictionContext]) -> list[Prediction]: ...

    def learn_batch(self, contexts: Sequence[PredictionContext]) -> None: ...


def keeps_seq_state(predictor: object) -> bool:
    """Whether `predictor` advances a per-user sequence state (PredictionContext.seq_state):
    only then does the stream keep one per user; other predictors are never sent one."""
    return bool(getattr(predictor, "keeps_seq_state", False))


class Wrapper:
    """Base of predictors that wrap another one (`inner`): online learning, metrics and
    closing go to it; subclasses change what `predict_batch` returns."""

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner

    @property
    def keeps_seq_state(self) -> bool:
        return keeps_seq_state(self.inner)

    def learn_batch(self, contexts: Sequence[PredictionContext]) -> None:
        self.inner.learn_batch(contexts)

    def metrics(self) -> dict[str, Any]:
        get = getattr(self.inner, "metrics", None)
        return dict(get()) if callable(get) else {}

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()
