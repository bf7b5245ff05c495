"""Pure state of the risk-label join: one user's scored events (snapshots) and waiting labels.

No faust here (stream/feedback/risk_labels.py drives it), so it is unit-testable. A snapshot is
what the risk model scored for one event, exactly as it saw it: the decision log's record
(every recommendation carries the risk score, model version and threshold) or, for an event
that triggered no recommendation, its risk alert (which carries the features and sequence).
Events that got neither have no snapshot and cannot be labelled.

Join semantics, all in event time (the partition's watermark is the latest event time of the
snapshots seen on it; labels do not move it, their clock is only compared with it):
  * a label with an `event_id` labels that event's snapshot, whenever either arrives;
  * a label with only a `user_id` labels every snapshot of the user with
    label.ts - window <= event_ts <= label.ts, those already kept and those arriving later;
  * a label waits for snapshots until the watermark passes its ts + grace (the allowed
    lateness); an event label still unmatched then is dropped as unmatched;
  * a snapshot is kept until the watermark passes its event_ts + window, and at most
    `max_snapshots` per user (beyond it the oldest without an alert go first);
  * each snapshot remembers the labels it was joined with, so a repeated label (same scope,
    label, source and ts) or a repeated snapshot (decision and alert of one event, a
    re-delivery) yields one output record.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from stream.errors import PoisonMessage, StateError

STATE_VERSION = b"L1"
# version, partition, next expiry (-1: none); the agent reads it without decoding the rest
_HEADER = struct.Struct(">2sHq")

Scope = Literal["event", "user"]


@dataclass(frozen=True, slots=True)
class LabelConfig:
    window_ms: int = 7 * 86_400_000
    grace_ms: int = 60_000
    max_snapshots: int = 100
    max_labels: int = 100


@dataclass(slots=True)
class Snapshot:
    """One scored event: the risk model's input and verdict at scoring time."""

    event_id: str
    event_ts: int
    score: float
    model_version: str
    threshold: float
    features: dict[str, float]
    sequence: list[Any]  # [item_id, type, ts], oldest first

    @property
    def alerted(self) -> bool:
        return self.score >= self.threshold  # the worker's own rule for raising an alert


@dataclass(frozen=True, slots=True)
class Label:
    scope: Scope
    event_id: str | None  # set when scope == "event"
    label: str
    source: str
    ts: int

    @property
    def mark(self) -> str:
        """Identity of the label within one snapshot: what makes a repeat a repeat."""
        return f"{self.scope}\x00{self.label}\x00{self.ts}\x00{self.source}"


@dataclass(frozen=True, slots=True)
class Match:
    snapshot: Snapshot
    label: Label


def snapshot_from_decision(d: dict[str, Any]) -> Snapshot | None:
    """The risk snapshot in a `decisions` record; None for records of older workers that
    logged no risk score. KeyError / TypeError / ValueError for a malformed record."""
    score = d.get("risk_score")
    if score is None:
        return None
    return Snapshot(str(d["event_id"]), int(d["event_ts"]), float(score),
                    str(d["risk_model_version"]), float(d["risk_threshold"]),
                    _features(d["features"]), list(d["sequence"]))


def snapshot_from_alert(a: dict[str, Any]) -> Snapshot | None:
    """The snapshot in a `risk-alerts` record; None for alerts of older workers (no
    features)."""
    features = a.get("features")
    if features is None:
        return None
    return Snapshot(str(a["event_id"]), int(a["event_ts"]), float(a["score"]),
                    str(a["model_version"]), float(a["threshold"]), _features(features),
                    list(a.get("sequence") or []))


def _features(obj: Any) -> dict[str, float]:
    if not isinstance(obj, dict):
        raise PoisonMessage("schema", "features must be an object")
    return obj


class UserLabels:
    """One user's kept snapshots and the labels still waiting for snapshots."""

    __slots__ = ("partition", "snaps", "labels")

    def __init__(self, partition: int) -> None:
        self.partition = partition
        # event_id -> (snapshot, marks of the labels it was joined with)
        self.snaps: dict[str, tuple[Snapshot, list[str]]] = {}
        self.labels: list[Label] = []  # arrival order

    # -- serialisation ------------------------------------------------------------------
    def to_bytes(self, cfg: LabelConfig) -> bytes:
        # zlib: a user's consecutive snapshots share all but one item of their sequences
        body = orjson.dumps({
            "s": [[s.event_id, s.event_ts, s.score, s.model_version, s.threshold, s.features,
                   s.sequence, marks] for s, marks in self.snaps.values()],
            "l": [[lb.scope, lb.event_id, lb.label, lb.source, lb.ts] for lb in self.labels],
        })
        nxt = self.next_expiry(cfg)
        return (_HEADER.pack(STATE_VERSION, self.partition, -1 if nxt is None else nxt)
                + zlib.compress(body, 1))

    @classmethod
    def from_bytes(cls, raw: bytes) -> UserLabels:
        version, partition, _ = _HEADER.unpack_from(raw)
        if version != STATE_VERSION:
            raise StateError("not a risk-label join state")
        obj = orjson.loads(zlib.decompress(raw[_HEADER.size:]))
        st = cls(partition)
        for eid, ts, score, mv, thr, feats, seq, marks in obj["s"]:
            st.snaps[eid] = (Snapshot(eid, ts, score, mv, thr, feats, seq), marks)
        st.labels = [Label(*lb) for lb in obj["l"]]
        return st

    @staticmethod
    def peek(raw: bytes) -> tuple[int, int | None]:
        """(partition, next expiry) of a stored state, without decoding it."""
        version, partition, nxt = _HEADER.unpack_from(raw)
        if version != STATE_VERSION:
            raise StateError("not a risk-label join state")
        return partition, None if nxt < 0 else nxt

    def empty(self) -> bool:
        return not (self.snaps or self.labels)

    # -- the join -------------------------------------------------------------------------
    def add_snapshot(self, snap: Snapshot, cfg: LabelConfig, watermark: int
                     ) -> tuple[str, list[Match]]:
        """Keep a scored event and label it with the waiting labels that cover it. Status:
        "added"; "duplicate" (this event is kept already: decision and alert of one event,
        or a re-delivery); "too_late" (older than the window behind the watermark);
        "evicted" (the user has max_snapshots newer or alerted ones)."""
        if snap.event_id in self.snaps:
            return "duplicate", []
        if snap.event_ts + cfg.window_ms < watermark:
            return "too_late", []
        marks: list[str] = []
        self.snaps[snap.event_id] = (snap, marks)
        if len(self.snaps) > cfg.max_snapshots:
            # evict the oldest unalerted first: alerted events are the rare, costly ones
            order = sorted(self.snaps.values(), key=lambda e: (e[0].alerted, e[0].event_ts))
            for s, _ in order[: len(self.snaps) - cfg.max_snapshots]:
                del self.snaps[s.event_id]
            if snap.event_id not in self.snaps:
                return "evicted", []
        out: list[Match] = []
        for lb in list(self.labels):
            if _covers(lb, snap, cfg) and lb.mark not in marks:
                marks.append(lb.mark)
                out.append(Match(snap, lb))
                if lb.scope == "event":  # its one event is found: it waits no longer
                    self.labels.remove(lb)
        return "added", out

    def add_label(self, lb: Label, cfg: LabelConfig, watermark: int
                  ) -> tuple[str, list[Match]]:
        """Label the kept snapshots the label covers, and keep it for later ones while the
        watermark has not passed its ts + grace. Status: "joined", "waiting" (kept, nothing
        to label yet), "duplicate" (seen before, nothing new), "unmatched" (it labels nothing
        and nothing more can come)."""
        out: list[Match] = []
        seen = False
        for snap, marks in self.snaps.values():
            if _covers(lb, snap, cfg):
                if lb.mark in marks:
                    seen = True
                else:
                    marks.append(lb.mark)
                    out.append(Match(snap, lb))
        if lb.scope == "event" and (out or seen):
            return ("joined" if out else "duplicate"), out
        waiting = False
        if lb in self.labels:
            seen = waiting = True
        elif watermark <= lb.ts + cfg.grace_ms:
            self.labels.append(lb)
            waiting = True
            if len(self.labels) > cfg.max_labels:
                self.labels.sort(key=lambda x: x.ts)
                del self.labels[: len(self.labels) - cfg.max_labels]
        if out:
            return "joined", out
        if seen:
            return "duplicate", out
        return ("waiting" if waiting else "unmatched"), out

    def expire(self, watermark: int, cfg: LabelConfig) -> list[Label]:
        """Forget snapshots past event_ts + window and labels past ts + grace behind the
        watermark; returns the event labels forgotten without having found their event."""
        if self.snaps:
            for eid in [e for e, (s, _) in self.snaps.items()
                        if s.event_ts + cfg.window_ms < watermark]:
                del self.snaps[eid]
        unmatched: list[Label] = []
        if self.labels:
            keep = []
            for lb in self.labels:
                if lb.ts + cfg.grace_ms >= watermark:
                    keep.append(lb)
                elif lb.scope == "event":
                    unmatched.append(lb)
            self.labels = keep
        return unmatched

    def next_expiry(self, cfg: LabelConfig) -> int | None:
        """The watermark beyond which expire() has something to forget."""
        times = [s.event_ts + cfg.window_ms for s, _ in self.snaps.values()]
        times += [lb.ts + cfg.grace_ms for lb in self.labels]
        return min(times) if times else None


def _covers(lb: Label, snap: Snapshot, cfg: LabelConfig) -> bool:
    if lb.scope == "event":
        return lb.event_id == snap.event_id
    return lb.ts - cfg.window_ms <= snap.event_ts <= lb.ts


def feedback_id(m: Match) -> str:
    """Stable id of one output record (no user id in it, so a plain hash will do)."""
    lb = m.label
    key = f"{m.snapshot.event_id}\x00{lb.mark}".encode()
    return hashlib.blake2b(key, digest_size=16).hexdigest()
