"""ExplorationPredictor: any Predictor's ranking, shown through an exploration policy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from model.policy import KeyedRandom, Policy
from model.predictor import Predictor
from model.types import PolicyTrace, Prediction, PredictionContext, ScoredItem


class ExplorationPredictor:
    """Asks the inner predictor for a pool of `pool` ranked candidates per context, lets the
    policy pick `context.k` of them, and returns those with their inclusion probabilities
    as `propensity` plus a PolicyTrace (the pool, and the shadow policy's would-be slate).

    The shadow policy is computed on the same pool and logged, never shown. Randomness is
    keyed by (seed, event id): the same event always gets the same slate.
    """

    def __init__(self, inner: Predictor, policy: Policy, *, pool: int = 30, seed: int = 0,
                 shadow: Policy | None = None) -> None:
        if pool < 1:
            raise ValueError("pool must be at least 1")
        self.inner = inner
        self.policy = policy
        self.shadow = shadow
        self.pool = pool
        self.seed = seed
        self.name = inner.name
        self.version = inner.version

    def predict_batch(self, contexts: Sequence[PredictionContext]) -> list[Prediction]:
        # this runs for every event: widen k in place for the inner call (and put it back)
        # rather than copy each context, and fill the inner predictions in place
        asked = [c.k for c in contexts]
        pool_k = self.pool
        for c in contexts:
            if c.recommend and c.k < pool_k:
                c.k = pool_k
        try:
            preds = self.inner.predict_batch(contexts)
        finally:
            for c, k in zip(contexts, asked, strict=True):
                c.k = k
        new = tuple.__new__
        for ctx, pred in zip(contexts, preds, strict=True):
            if not ctx.recommend or not pred.items:
                continue
            pool = pred.items
            k = min(ctx.k, len(pool))
            label = self.policy.label()
            choice = self.policy.choose(pool, k, KeyedRandom(self.seed, ctx.event_id))
            trace = PolicyTrace(
                policy=label, explored=choice.explored,
                candidates=tuple([new(ScoredItem, (c[0], c[1], p))
                                  for c, p in zip(pool, choice.inclusion, strict=True)]))
            if self.shadow is not None:
                alt = self.shadow.choose(pool, k, KeyedRandom(self.seed + 1, ctx.event_id))
                trace.shadow_policy = self.shadow.label()
                trace.shadow_items = tuple(i.item_id for i in alt.items)
                trace.shadow_inclusion = alt.inclusion
            pred.items = choice.items
            pred.trace = trace
        return list(preds)

    def learn_batch(self, contexts: Sequence[PredictionContext]) -> None:
        self.inner.learn_batch(contexts)

    def metrics(self) -> dict[str, Any]:
        get = getattr(self.inner, "metrics", None)
        return dict(get()) if callable(get) else {}

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()
