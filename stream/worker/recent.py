"""What the worker keeps of its latest decisions and latencies, for the dashboard."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import orjson

from model.types import Prediction
from stream.schemas import Event

_LATEST_PER_GENERATION = 5000  # users per generation of `latest` (two are kept)


@dataclass
class LastDecision:
    """A user's latest event with its prediction, as kept for the dashboard."""

    event_id: str
    event_type: str
    event_ts: int
    model: str
    model_version: str
    risk_model_version: str
    risk_score: float
    reasons: list[tuple[str, float, float]]  # (feature, value, contribution)
    items: list[tuple[str, float, float]]  # (item_id, score, propensity)

    @staticmethod
    def encode(ev: Event, pred: Prediction) -> bytes:
        """The blob `from_bytes` reads: one small orjson dumps per event."""
        risk = pred.risk
        return orjson.dumps((
            ev.event_id, ev.type, ev.ts, pred.model, pred.model_version,
            pred.risk_model_version, risk.score, list(map(tuple, risk.reasons)),
            list(map(tuple, pred.items))))

    @classmethod
    def from_bytes(cls, raw: bytes) -> LastDecision:
        return cls(*orjson.loads(raw))


class RecentDecisions:
    """The latest decisions (all users, and a few per user), each user's latest event with
    its prediction, and the latest latencies as (monotonic s, ms).

    Per user the latest event is one orjson blob (LastDecision.encode) in two generations of
    plain dicts, so the per-event cost is one small dumps and one dict store, memory stays
    bounded, and nothing here is a container the garbage collector must scan (keeping the
    Prediction objects alive cost more in GC passes than the rest of the decision).
    """

    def __init__(self) -> None:
        self.decisions: list[dict[str, Any]] = []
        self.by_user: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()  # bounded LRU
        self.latest: dict[str, bytes] = {}  # user id -> LastDecision blob
        self._older: dict[str, bytes] = {}
        self.e2e: deque[tuple[float, float]] = deque(maxlen=20_000)
        self.inference: deque[tuple[float, float]] = deque(maxlen=2_000)

    def remember(self, kind: str, record: dict[str, Any]) -> None:
        entry = {"kind": kind, **record}
        self.decisions.append(entry)
        if len(self.decisions) > 200:
            del self.decisions[:100]
        mine = self.by_user.pop(record["user_id"], [])
        mine.append(entry)
        self.by_user[record["user_id"]] = mine[-5:]
        if len(self.by_user) > 2000:
            self.by_user.popitem(last=False)

    def rotate(self) -> None:
        """Start a new generation of `latest` once it is full (after each batch)."""
        if len(self.latest) > _LATEST_PER_GENERATION:
            self._older, self.latest = self.latest, {}

    def last_decision(self, user_id: str) -> LastDecision | None:
        """The user's latest event and what was decided for it, if still kept."""
        raw = self.latest.get(user_id) or self._older.get(user_id)
        return LastDecision.from_bytes(raw) if raw else None

    def newest_decision(self) -> LastDecision | None:
        for gen in (self.latest, self._older):
            if gen:
                return LastDecision.from_bytes(next(reversed(gen.values())))
        return None
