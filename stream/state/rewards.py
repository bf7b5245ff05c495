"""Pure state of the delayed-reward join: pending recommendations and engagements per user.

No faust here (stream/feedback/app.py drives it), so it is unit-testable. Time is event
time throughout: a recommendation's window is [event_ts, event_ts + window]; it closes when
the partition's events watermark (the latest event time seen there) passes window end +
lateness.
Engagements are buffered as well as recommendations, because a decision reaches the join
after the events that follow it whenever the worker lags: the join is symmetric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from stream.errors import StateError

STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class JoinConfig:
    window_ms: int = 1_800_000
    lateness_ms: int = 60_000
    rewards: tuple[tuple[str, float], ...] = (("click", 1.0), ("add_to_cart", 2.0),
                                              ("purchase", 5.0))
    max_pending: int = 200
    max_engagements: int = 500
    max_done: int = 2000

    @property
    def reward_of(self) -> dict[str, float]:
        return dict(self.rewards)

    @property
    def horizon_ms(self) -> int:
        """How far behind the watermark buffered engagements and done ids are kept."""
        return 2 * (self.window_ms + self.lateness_ms)


@dataclass(slots=True)
class Outcome:
    """A closed recommendation: the decision as logged, and what it earned."""

    decision: dict[str, Any]
    reward: float
    engaged_item: str | None
    engaged_type: str | None
    outcome_ts: int


class UserJoin:
    """One user's pending decisions, recent engagements and recently closed rec ids."""

    __slots__ = ("partition", "pending", "engagements", "done")

    def __init__(self, partition: int) -> None:
        self.partition = partition
        # rec_id -> [decision, best reward, engaged item, engaged type, engagement ts]
        self.pending: dict[str, list[Any]] = {}
        # (ts, type, item_id, event_id), in arrival order
        self.engagements: list[tuple[int, str, str, str]] = []
        self.done: dict[str, int] = {}  # rec_id -> window end

    # -- serialisation ------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        return orjson.dumps({"v": STATE_VERSION, "p": self.partition, "pending": self.pending,
                             "eng": self.engagements, "done": self.done})

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserJoin:
        obj = orjson.loads(raw)
        if not isinstance(obj, dict) or obj.get("v") != STATE_VERSION:
            raise StateError("not a reward-join state")
        st = cls(int(obj["p"]))
        st.pending = obj["pending"]
        st.engagements = [tuple(e) for e in obj["eng"]]  # type: ignore[misc]
        st.done = obj["done"]
        return st

    def empty(self) -> bool:
        return not (self.pending or self.engagements or self.done)

    @staticmethod
    def partition_of(raw: bytes) -> int:
        """The partition a stored state belongs to (-1: not a state)."""
        try:
            return int(orjson.loads(raw)["p"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return -1

    # -- the join -------------------------------------------------------------------------
    def deadline(self, decision: dict[str, Any], cfg: JoinConfig) -> int:
        return int(decision["event_ts"]) + cfg.window_ms

    def add_decision(self, decision: dict[str, Any], cfg: JoinConfig, watermark: int = 0
                     ) -> str:
        """Start waiting for the decision's reward: "added"; "duplicate" when it is pending
        or was emitted already; "too_late" when its window ended further back than the done
        ids are kept (it could be a re-delivery of one whose id was forgotten, so it must not
        be emitted a second time)."""
        rec_id = decision["rec_id"]
        if rec_id in self.pending or rec_id in self.done:
            return "duplicate"
        start = int(decision["event_ts"])
        end = start + cfg.window_ms
        if end < watermark - cfg.horizon_ms:
            return "too_late"
        entry: list[Any] = [decision, 0.0, None, None, None]
        shown = {i["item_id"] for i in decision["items"]}
        reward_of = cfg.reward_of
        for ts, typ, item, event_id in self.engagements:
            if item in shown and start <= ts <= end and event_id != decision["event_id"]:
                _credit(entry, reward_of.get(typ, 0.0), item, typ, ts)
        self.pending[rec_id] = entry
        return "added"

    def add_engagement(self, ts: int, typ: str, item: str, event_id: str,
                       cfg: JoinConfig) -> None:
        """Buffer an engagement and credit every pending decision that showed the item."""
        if any(e[3] == event_id for e in self.engagements):
            return  # the same event again (retry / replay): it counts once
        self.engagements.append((ts, typ, item, event_id))
        if len(self.engagements) > cfg.max_engagements:
            del self.engagements[: len(self.engagements) - cfg.max_engagements]
        reward = cfg.reward_of.get(typ, 0.0)
        for entry in self.pending.values():
            d = entry[0]
            start = int(d["event_ts"])
            if (start <= ts <= start + cfg.window_ms and event_id != d["event_id"]
                    and any(i["item_id"] == item for i in d["items"])):
                _credit(entry, reward, item, typ, ts)

    def close_due(self, watermark: int, cfg: JoinConfig, keep_from: int | None = None
                  ) -> list[Outcome]:
        """Close every decision whose window (plus lateness) the events' watermark has
        passed, and the oldest ones beyond max_pending. Engagements and done ids older than
        `keep_from` (default: the watermark) minus the horizon are forgotten: pass the
        decisions' watermark when decisions lag behind events, so the engagements they will
        need are still there when they arrive."""
        out: list[Outcome] = []
        for rec_id, entry in list(self.pending.items()):
            end = int(entry[0]["event_ts"]) + cfg.window_ms
            if end + cfg.lateness_ms <= watermark:
                out.append(self._close(rec_id, end))
        if len(self.pending) > cfg.max_pending:
            oldest = sorted(self.pending, key=lambda r: int(self.pending[r][0]["event_ts"]))
            for rec_id in oldest[: len(self.pending) - cfg.max_pending]:
                out.append(self._close(rec_id, int(self.pending[rec_id][0]["event_ts"])
                                       + cfg.window_ms))
        cutoff = (watermark if keep_from is None else keep_from) - cfg.horizon_ms
        if self.engagements and self.engagements[0][0] < cutoff:
            self.engagements = [e for e in self.engagements if e[0] >= cutoff]
        if self.done:
            keep = {r: end for r, end in self.done.items() if end >= cutoff}
            if len(keep) > cfg.max_done:
                keep = dict(sorted(keep.items(), key=lambda kv: kv[1])[-cfg.max_done:])
            self.done = keep
        return out

    def next_deadline(self, cfg: JoinConfig) -> int | None:
        if not self.pending:
            return None
        return min(int(e[0]["event_ts"]) for e in self.pending.values()) + cfg.window_ms

    def mark_done(self, rec_id: str, end: int) -> None:
        self.pending.pop(rec_id, None)
        self.done[rec_id] = end

    def _close(self, rec_id: str, end: int) -> Outcome:
        decision, reward, item, typ, ts = self.pending.pop(rec_id)
        self.done[rec_id] = end
        return Outcome(decision, float(reward), item, typ, int(ts) if ts is not None else end)


def _credit(entry: list[Any], reward: float, item: str, typ: str, ts: int) -> None:
    """Keep the highest reward; among equal ones the earliest engagement."""
    if reward <= 0:
        return
    if reward > entry[1] or (reward == entry[1] and entry[4] is not None and ts < entry[4]):
        entry[1], entry[2], entry[3], entry[4] = reward, item, typ, ts
