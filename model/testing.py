"""Fakes that satisfy the model Protocols, so tests of `stream/` need no trained nets."""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, Sequence
from pathlib import Path

from model.recommenders.base import Ranked
from model.types import Prediction, PredictionContext, Reason, RiskOutput, ScoredItem, SeqItem

__all__ = ["DEFAULT_CATALOGUE", "FakePredictor", "FakeRecommender"]

DEFAULT_CATALOGUE: tuple[str, ...] = tuple(f"item-{i}" for i in range(50))


class FakeRecommender:
    """A `Recommender` that ranks a fixed catalogue: the same order for everyone.

    Honours `k` and the exclusions, like every real method; `save`/`load` round-trip.
    """

    method = "fake"

    def __init__(self, catalogue: Sequence[str] = DEFAULT_CATALOGUE) -> None:
        self.catalogue = tuple(catalogue)

    def recommend(self, seqs: Sequence[Sequence[SeqItem]], k: int,
                  exclude: Sequence[Collection[str]]) -> list[Ranked]:
        out: list[Ranked] = []
        for _seq, ex in zip(seqs, exclude, strict=True):
            row = [(item, 1.0 / (1 + rank)) for rank, item in enumerate(self.catalogue)
                   if item not in ex]
            out.append(row[:k])
        return out

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "fake.json").write_text(json.dumps(list(self.catalogue)), "utf-8")

    @classmethod
    def load(cls, directory: Path) -> FakeRecommender:
        return cls(json.loads((directory / "fake.json").read_text("utf-8")))


class FakePredictor:
    """A `Predictor` with known, deterministic answers, that records how it was called.

    Recommendations: the catalogue in order, minus the trigger item and `exclude_items`, at
    most `context.k` (none when `context.recommend` is False). Risk: `features[risk_feature]
    / risk_scale` clipped to [0, 1], with that feature as the one reason when it is positive.
    `fail_with` makes `predict_batch` raise it (to test error paths). Thread-safe counters:
    the worker calls from a thread pool. With `keeps_seq_state`, a context's `seq_state`
    advances as the hybrid's does: its bytes are the history's items joined by b"|", one item
    appended to a kept state, the whole history written out for b"" (a re-encode).
    """

    def __init__(self, name: str = "fake", version: str = "fake-v1", *,
                 catalogue: Sequence[str] = DEFAULT_CATALOGUE,
                 risk_feature: str = "count_purchase_1m", risk_scale: float = 5.0,
                 risk_version: str = "fake-risk-v1",
                 fail_with: BaseException | None = None, keeps_seq_state: bool = False
                 ) -> None:
        self.name = name
        self.keeps_seq_state = keeps_seq_state
        self.version = version
        self.risk_version = risk_version
        self.recommender = FakeRecommender(catalogue)
        self.risk_feature = risk_feature
        self.risk_scale = risk_scale
        self.fail_with = fail_with
        self.batch_sizes: list[int] = []
        self.seen_event_ids: list[str] = []
        self.learned = 0
        self.closed = False
        self._lock = threading.Lock()

    def predict_batch(self, contexts: Sequence[PredictionContext]) -> list[Prediction]:
        with self._lock:
            self.batch_sizes.append(len(contexts))
            self.seen_event_ids.extend(c.event_id for c in contexts)
        if self.fail_with is not None:
            raise self.fail_with
        out: list[Prediction] = []
        for c in contexts:
            items: tuple[ScoredItem, ...] = ()
            if c.recommend and c.k > 0:
                (row,) = self.recommender.recommend([c.sequence], c.k,
                                                    [c.exclude_items | {c.item_id}])
                items = tuple(ScoredItem(i, s, 1.0) for i, s in row)
            out.append(Prediction(items=items, risk=self.risk(c.features), model=self.name,
                                  model_version=self.version,
                                  risk_model_version=self.risk_version,
                                  seq_state=self._advance(c)))
        return out

    def _advance(self, c: PredictionContext) -> bytes | None:
        if not self.keeps_seq_state or c.seq_state is None:
            return None
        if c.seq_state:
            return c.seq_state + b"|" + c.item_id.encode()
        return b"|".join(e.item_id.encode() for e in c.sequence)

    def risk(self, features: dict[str, float]) -> RiskOutput:
        value = float(features.get(self.risk_feature, 0.0))
        score = min(1.0, max(0.0, value / self.risk_scale))
        reasons = (Reason(self.risk_feature, value, score),) if score > 0 else ()
        return RiskOutput(score=score, reasons=reasons)

    def learn_batch(self, contexts: Sequence[PredictionContext]) -> None:
        with self._lock:
            self.learned += len(contexts)

    def close(self) -> None:
        self.closed = True
