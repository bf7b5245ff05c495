"""The baseline predictor, learned online: popularity + co-visitation, and a rule risk score."""

from __future__ import annotations

import heapq
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

from model.types import (
    Prediction,
    PredictionContext,
    Reason,
    RiskOutput,
    ScoredItem,
    SeqItem,
)

__all__ = ["BaselinePredictor", "RISK_RULES", "RiskRule"]

# How much one event says about an item, by type (view, click, add_to_cart, purchase).
_TYPE_WEIGHT = {"view": 1.0, "click": 1.5, "add_to_cart": 3.0, "purchase": 4.0}


@dataclass(frozen=True, slots=True)
class RiskRule:
    """One explainable rule term: contribution = weight * transform(feature value)."""

    feature: str
    weight: float
    offset: float  # the part of the value that is normal: max(0, value - offset)
    cap: float


RISK_RULES: tuple[RiskRule, ...] = (
    RiskRule("spend_z_1h", 0.9, 2.0, 8.0),  # spend velocity z-score over users
    RiskRule("distinct_devices_24h", 1.3, 1.0, 6.0),  # new-device bursts
    RiskRule("distinct_ips_24h", 0.8, 2.0, 8.0),  # IP hopping
    RiskRule("count_purchase_1m", 1.4, 1.0, 6.0),  # purchase bursts
    RiskRule("count_add_to_cart_1m", 0.5, 3.0, 10.0),  # cart bursts
    RiskRule("purchase_to_view_1h", 1.0, 1.0, 5.0),  # buying without browsing
    RiskRule("new_device", 0.8, 0.0, 1.0),
    RiskRule("new_ip", 0.5, 0.0, 1.0),
)
_RISK_BIAS = -5.0
_RULE_TUPLES = tuple((r.feature, r.weight, r.offset, r.cap) for r in RISK_RULES)
_second = operator.itemgetter(1)
_third = operator.itemgetter(2)
# weight of the user's own item at each age (0 = the event just seen): recency decay, over
# as much history as the worker keeps (the features' sequence, 50 events)
_RECENCY = tuple(0.3 / (1 + age) ** 0.5 for age in range(50))
# Above every neighbour score (each of the `window` lists sums to at most 1 / (1 + rank)):
# the user's own items all rank first while re-consumption is what hits
_HISTORY_FIRST = 2.0
_RATE_ALPHA = 0.002  # the EWMA of where next items come from: ~500 events of memory
_RATE_TOP = 20  # a source "had" the next item when it was among its first this many


class _Welford:
    """Running mean / std of positive spend, so the z-score adapts to the stream."""

    __slots__ = ("n", "mean", "m2")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    def z(self, x: float) -> float:
        if self.n < 20:
            return 0.0
        std = math.sqrt(self.m2 / (self.n - 1)) or 1.0
        return (x - self.mean) / std


class BaselinePredictor:
    """Online popularity + item-to-item co-visitation, and a rule-based risk score.

    Co-visitation: items that follow each other in a user's sequence (adjacent by event
    time, however far apart: reviews and purchases are days apart; `session_gap_ms` restores
    the classic in-session variant), weighted by event type; the user's own items are
    candidates too; popularity fills the rest. Which of the two sources ranks first is
    learned online: the user's own items all go first while the next different item is
    more often one of them (re-consumption, common in shop logs) than a neighbour of the
    trigger; where nothing repeats, neighbours lead. Memory is bounded: `max_items` items,
    `max_neighbours` neighbours each; counts decay by halving.
    """

    name = "covisitation"

    def __init__(self, *, max_items: int = 200_000, max_neighbours: int = 64,
                 window: int = 3, session_gap_ms: int | None = None,
                 decay_every: int = 500_000) -> None:
        self.version = "baseline-online"
        self.max_items = max_items
        self.max_neighbours = max_neighbours
        self.window = window
        self.session_gap_ms = session_gap_ms
        self.decay_every = decay_every
        self.pop: dict[str, float] = {}
        self.covis: dict[str, dict[str, float]] = {}
        self._top_pop: list[tuple[str, float]] = []
        self._top_items: list[ScoredItem] = []
        self._top_n = 200  # grows to the largest k + exclusions asked for
        self._since_decay = 0
        self._since_top = 0
        self._spend = _Welford()
        self.events_seen = 0
        # how often the next different item was in the user's history / among the
        # trigger's neighbours (EWMA; equal at the start, when history goes first)
        self.rate_history = 0.0
        self.rate_neighbours = 0.0

    # predict_batch learns each event right after predicting it: asked twice, it answers
    # differently (model.testing.check_predictor skips its repeat rules for that reason)
    learns_online = True

    # -- learning -------------------------------------------------------------------
    def learn_batch(self, contexts: Sequence[PredictionContext]) -> None:
        """Nothing left to learn: predict_batch learned each event right after predicting it."""

    def _maybe_refresh_top(self) -> None:
        # popularity only fills short candidate lists: refreshing it rarely is enough
        if self._since_top >= 20_000 or (len(self.pop) < 5000 and self._since_top >= 50):
            self._refresh_top()

    def _learn(self, ctx: PredictionContext) -> None:
        self.events_seen += 1
        w = _TYPE_WEIGHT.get(ctx.event_type, 1.0)
        item = ctx.item_id
        self.pop[item] = self.pop.get(item, 0.0) + w
        self._since_top += 1
        self._learn_spend(ctx)
        seq = ctx.sequence
        n = len(seq)
        if n >= 2 and seq[n - 2].item_id != item:
            self._count_source(seq, item)
        # the trigger is the last element; link it with the few before it
        gap = self.session_gap_ms
        for j in range(max(0, n - 1 - self.window), n - 1):
            prev = seq[j]
            if prev.item_id == item or (gap is not None and ctx.ts_ms - prev.ts_ms > gap):
                continue
            wt = w / (n - 1 - j)
            self._link(prev.item_id, item, wt)
            self._link(item, prev.item_id, wt * 0.5)
        self._since_decay += 1
        if self._since_decay >= self.decay_every:
            self._decay()
        if len(self.pop) > self.max_items:
            self._evict()

    def _count_source(self, seq: Sequence[SeqItem], item: str) -> None:
        """Where this event's item was when the previous event was recommended on."""
        n = len(seq)
        in_history = any(seq[j].item_id == item for j in range(max(0, n - 2 - _RATE_TOP), n - 2))
        in_neighbours = False
        nb = self.covis.get(seq[n - 2].item_id)
        w = nb.get(item) if nb is not None else None
        if nb is not None and w is not None:  # its rank, ties counted against it
            in_neighbours = sum(1 for v in nb.values() if v >= w) <= _RATE_TOP
        a = _RATE_ALPHA
        self.rate_history += a * (float(in_history) - self.rate_history)
        self.rate_neighbours += a * (float(in_neighbours) - self.rate_neighbours)

    def _link(self, a: str, b: str, w: float) -> None:
        nb = self.covis.get(a)
        if nb is None:
            nb = self.covis[a] = {}
        nb[b] = nb.get(b, 0.0) + w
        if len(nb) > 2 * self.max_neighbours:
            keep = sorted(nb.items(), key=lambda kv: kv[1], reverse=True)[: self.max_neighbours]
            self.covis[a] = dict(keep)

    def _decay(self) -> None:
        self._since_decay = 0
        self.pop = {k: v / 2 for k, v in self.pop.items() if v >= 0.5}
        for a in list(self.covis):
            nb = {k: v / 2 for k, v in self.covis[a].items() if v >= 0.25}
            if nb:
                self.covis[a] = nb
            else:
                del self.covis[a]

    def _evict(self) -> None:
        keep = sorted(self.pop.items(), key=lambda kv: kv[1], reverse=True)
        keep = keep[: int(self.max_items * 0.8)]
        self.pop = dict(keep)
        self.covis = {k: v for k, v in self.covis.items() if k in self.pop}

    def _refresh_top(self) -> None:
        self._since_top = 0
        self._top_pop = heapq.nlargest(self._top_n, self.pop.items(), key=_second)
        # popularity only fills after the personal candidates: scaled far below them
        top = self._top_pop[0][1] if self._top_pop else 1.0
        self._top_items = [ScoredItem(b, 1e-3 * c / top, 1.0) for b, c in self._top_pop]

    # -- prediction -----------------------------------------------------------------
    def predict_batch(self, contexts: Sequence[PredictionContext]) -> list[Prediction]:
        """Predict, then learn, one event at a time: every decision sees exactly the events
        before it (as a truly online model should), even inside one large batch."""
        out = []
        for ctx in contexts:
            out.append(self._predict(ctx))
            self._learn(ctx)
            if not self._top_pop or self._since_top >= 50:
                self._maybe_refresh_top()
        return out

    def _predict(self, ctx: PredictionContext) -> Prediction:
        items: tuple[ScoredItem, ...] = ()
        if ctx.recommend:
            items = self.recommend(ctx)
        return Prediction(items=items, risk=self.risk(ctx.features), model=self.name,
                          model_version=self.version, risk_model_version="rules-v1")

    def recommend(self, ctx: PredictionContext) -> tuple[ScoredItem, ...]:
        k = ctx.k
        exclude = ctx.exclude_items
        trigger = ctx.item_id
        scores: dict[str, float] = {}
        seq = ctx.sequence
        n = len(seq)
        covis = self.covis
        # co-visitation neighbours of the last few items, most recent weighted highest
        for rank in range(min(n, self.window)):
            nb = covis.get(seq[n - 1 - rank].item_id)
            if not nb:
                continue
            f = 1.0 / ((1 + rank) * (sum(nb.values()) or 1.0))
            for b, c in nb.items():
                scores[b] = scores.get(b, 0.0) + f * c
        # the user's own recent items (re-consumption), by recency and intent
        weight = _TYPE_WEIGHT
        first = _HISTORY_FIRST if self.rate_history >= self.rate_neighbours else 0.0
        mine: set[str] = set()
        for age in range(min(n, len(_RECENCY))):
            e = seq[n - 1 - age]
            b = e.item_id
            bonus = 0.0
            if b not in mine:
                mine.add(b)
                bonus = first
            scores[b] = scores.get(b, 0.0) + bonus + _RECENCY[age] * weight.get(
                e.event_type, 1.0)
        scores.pop(trigger, None)
        for b in exclude:
            scores.pop(b, None)
        new = tuple.__new__  # NamedTuple's own constructor is several times slower
        if len(scores) >= k:
            ranked = heapq.nlargest(k, scores.items(), key=_second)
            return tuple([new(ScoredItem, (b, s, 1.0)) for b, s in ranked])
        out = [new(ScoredItem, (b, s, 1.0))
               for b, s in sorted(scores.items(), key=_second, reverse=True)]
        # popularity fills the rest (cold users, unknown items)
        if len(self._top_items) < min(k + len(exclude) + 1, len(self.pop)):
            # the cached list is from when fewer items were known, or too short for this k:
            # refresh it now rather than return fewer than k items (rare)
            self._top_n = max(self._top_n, k + len(exclude) + 1)
            self._refresh_top()
        for item in self._top_items:
            b = item.item_id
            if b not in scores and b != trigger and b not in exclude:
                out.append(item)
                if len(out) >= k:
                    break
        return tuple(out)

    def _learn_spend(self, ctx: PredictionContext) -> None:
        if ctx.event_type == "purchase":
            self._spend.add(ctx.features.get("spend_1h", 0.0))

    def risk_online(self, ctx: PredictionContext) -> RiskOutput:
        """The rule risk of `ctx`, then its spend into the running spend z-score, as
        predict_batch scores and learns each event: for a predictor that serves this rule
        risk beside its own recommender (model.serving.ModelPredictor without a risk net),
        whose spend velocity rule would otherwise never leave zero."""
        out = self.risk(ctx.features)
        self._learn_spend(ctx)
        return out

    def risk(self, features: dict[str, float]) -> RiskOutput:
        get = features.get
        logit = _RISK_BIAS
        reasons = []
        for feature, weight, offset, cap in _RULE_TUPLES:
            v = self._spend.z(get("spend_1h", 0.0)) if feature == "spend_z_1h" else get(
                feature, 0.0)
            if v <= offset:
                continue
            c = weight * min(v - offset, cap)
            if not c:  # a subnormal excess (5e-324) underflows to 0: no reason to give
                continue
            reasons.append(Reason(feature, v, c))
            logit += c
        if len(reasons) > 1:
            reasons.sort(key=_third, reverse=True)
        score = 1.0 / (1.0 + math.exp(-logit))
        return RiskOutput(score=score, reasons=tuple(reasons))
