"""ExplorationPredictor: any Predictor's ranking, shown through an exploration policy."""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import TYPE_CHECKING

from model.errors import ConfigError
from model.policy.catalog import ItemCatalog
from model.policy.policies import KeyedRandom, Policy
from model.predictor import Predictor, Wrapper
from model.types import (
    RERANK_SEQ_WINDOW,
    PolicyTrace,
    Prediction,
    PredictionContext,
    RerankInput,
    ScoredItem,
)

__all__ = ["ExplorationPredictor"]

if TYPE_CHECKING:  # torch is imported only where a reranker is actually served
    from model.policy.reranker import Reranker


class ExplorationPredictor(Wrapper):
    """Asks the inner predictor for a pool of `pool` ranked candidates per context, lets the
    policy pick `context.k` of them, and returns those with their inclusion probabilities
    as `propensity` plus a PolicyTrace (the pool, and the shadow policy's would-be slate).

    The shadow policy is computed on the same pool and logged, never shown. Randomness is
    keyed by (seed, event id): the same event always gets the same slate.

    With a `reranker` (trained from feedback by `lamstream trainer`), the pool is reordered
    by the reranker's expected-reward scores before the policy chooses, the base scores are
    logged next to them, and the predictions name both versions ("v3+rerank-v2").

    Item categories: the `catalog` learns each trigger item's category from the contexts it
    sees; every trace logs the pool's categories and those of the user's last
    `recent_categories` items (what the reranker uses for category tastes). Pass one catalog
    to every version served so a model swap keeps what was learned.
    """

    def __init__(self, inner: Predictor, policy: Policy, *, pool: int = 30, seed: int = 0,
                 shadow: Policy | None = None, catalog: ItemCatalog | None = None,
                 recent_categories: int = RERANK_SEQ_WINDOW) -> None:
        if pool < 1:
            raise ConfigError("pool must be at least 1")
        super().__init__(inner)
        self.policy = policy
        self.shadow = shadow
        self.pool = pool
        self.seed = seed
        self.catalog = catalog if catalog is not None else ItemCatalog()
        self.recent_categories = recent_categories
        self.reranker: Reranker | None = None

    @property
    def name(self) -> str:
        return self.inner.name if self.reranker is None else f"{self.inner.name}+rerank"

    @property
    def version(self) -> str:
        r = self.reranker
        return self.inner.version if r is None else f"{self.inner.version}+rerank-{r.version}"

    def _categories(self, contexts: Sequence[PredictionContext], preds: Sequence[Prediction]
                    ) -> dict[int, tuple[tuple[str | None, ...], tuple[str | None, ...]]]:
        """(pool categories, recent-item categories) of each row that gets a pool."""
        cat = self.catalog
        for c in contexts:
            if c.category:
                cat.observe(c.item_id, c.category)
        n = self.recent_categories
        out = {}
        lookup = cat.lookup
        first = itemgetter(0)
        for i, (c, p) in enumerate(zip(contexts, preds, strict=True)):
            if c.recommend and p.items:
                recent = list(map(first, c.sequence[-n:])) if n > 0 else []
                out[i] = (lookup(list(map(first, p.items))), lookup(recent))
        return out

    def _rerank(self, contexts: Sequence[PredictionContext], preds: Sequence[Prediction],
                reranker: Reranker,
                cats: dict[int, tuple[tuple[str | None, ...], tuple[str | None, ...]]]
                ) -> dict[int, tuple[float, ...]]:
        """Reorder each pool (and its categories) in place by the reranker; returns the base
        scores per row."""
        rows = list(cats)
        scores = reranker.score([RerankInput(contexts[i].sequence,
                                             [c[0] for c in preds[i].items],
                                             [c[1] for c in preds[i].items],
                                             contexts[i].category, cats[i][0], cats[i][1])
                                 for i in rows])
        name, version = self.name, self.version
        base: dict[int, tuple[float, ...]] = {}
        for i, new in zip(rows, scores, strict=True):
            pool = preds[i].items
            order = sorted(range(len(pool)), key=lambda j: (-new[j], j))
            preds[i].items = tuple(ScoredItem(pool[j][0], new[j], 1.0) for j in order)
            base[i] = tuple(pool[j][1] for j in order)
            pool_cats = cats[i][0]
            cats[i] = (tuple(pool_cats[j] for j in order), cats[i][1])
        for p in preds:
            p.model, p.model_version = name, version
        return base

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
        reranker = self.reranker  # read once: a swap never lands within a batch
        cats = self._categories(contexts, preds)
        base = self._rerank(contexts, preds, reranker, cats) if reranker is not None else {}
        for row, (ctx, pred) in enumerate(zip(contexts, preds, strict=True)):
            if not ctx.recommend or not pred.items:
                continue
            pool = pred.items
            k = min(ctx.k, len(pool))
            label = self.policy.label()
            choice = self.policy.choose(pool, k, KeyedRandom(self.seed, ctx.event_id))
            trace = PolicyTrace(
                policy=label, explored=choice.explored,
                pool=tuple(pool), inclusion=choice.inclusion, base_scores=base.get(row, ()))
            pool_cats, recent_cats = cats[row]
            if any(pool_cats) or any(recent_cats):  # nothing to log without a catalogue
                trace.candidate_categories = pool_cats
                trace.recent_categories = recent_cats
            if self.shadow is not None:
                alt = self.shadow.choose(pool, k, KeyedRandom(self.seed + 1, ctx.event_id))
                trace.shadow_policy = self.shadow.label()
                trace.shadow_items = tuple(i.item_id for i in alt.items)
                trace.shadow_inclusion = alt.inclusion
            pred.items = choice.items
            pred.trace = trace
        return list(preds)

