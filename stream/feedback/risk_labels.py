"""The risk-label agent: join `risk-labels` to the scored events into `risk-feedback` records.

Part of the feedback app (`lamstream feedback`, consumer group `<app_id>-feedback`): it reads
`decisions` and `risk-alerts` (the risk model's point-in-time snapshots, see
stream.state.labels) and `risk-labels`, all keyed by user id with the same partition count, so
one table partition holds everything about the users of one input partition. Labels must be
keyed by their `user_id` (also labels naming an event): a label with another key, or none,
would be read where the user's snapshots are not, so it goes to the DLQ like any malformed
label, with its original bytes.

At least once, no loss across restarts: per batch the risk-feedback records are sent and
acked, then the users' states and a per-partition meta record (the watermark) are written to
the table's changelog (RocksDB store) and acked, and only then are the inputs acked. A crash
between the two re-joins the re-delivered inputs, which can repeat a record: `feedback_id`
identifies it. Risk-feedback for input partition p goes to partition p, key: the pseudonym.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faust
import orjson

from stream.errors import PoisonMessage
from stream.feedback.privacy import Pseudonymizer
from stream.kafka.faust_app import bytes_table, bytes_topic
from stream.records import dlq_record, risk_feedback_record
from stream.schemas import decode_risk_label
from stream.settings import Settings
from stream.state.joins import JoinBatch, PartitionedJoin, PartitionIndex, UserCache
from stream.state.labels import (
    Label,
    LabelConfig,
    Match,
    UserLabels,
    snapshot_from_alert,
    snapshot_from_decision,
)
from stream.topics import Topics

log = logging.getLogger(__name__)


def label_config(settings: Settings) -> LabelConfig:
    return LabelConfig(window_ms=settings.label_window_s * 1000,
                       grace_ms=settings.allowed_lateness_s * 1000,
                       max_snapshots=settings.label_max_snapshots)


@dataclass
class LabelStats:
    snapshots: int = 0
    duplicates: int = 0  # snapshots seen before (decision + alert of one event, re-delivery)
    too_late: int = 0  # snapshots older than the window behind the watermark
    no_risk: int = 0  # records of older workers without a risk snapshot
    labels: int = 0
    joined: int = 0  # risk-feedback records emitted
    unmatched: int = 0  # event labels whose event never came (or had no snapshot)
    dlq: int = 0
    malformed: int = 0  # internal records (decisions, alerts) that did not parse


class RiskLabelJoin(PartitionedJoin[PartitionIndex, UserLabels]):
    """The risk-label join's records (stream.state.joins drives the batches). A partition's
    watermark is the latest event time of the snapshots seen on it."""

    what = "risk feedback"

    def __init__(self, app: Any, settings: Settings, topics: Topics, table: Any,
                 pseudo: Pseudonymizer) -> None:
        super().__init__(app, table)
        self.settings = settings
        self.topics = topics
        self.pseudo = pseudo
        self.cfg = label_config(settings)
        self.stats = LabelStats()

    def new_partition(self) -> PartitionIndex:
        return PartitionIndex()

    def meta(self, ps: PartitionIndex) -> dict[str, Any]:
        return {"wm": ps.watermark}

    def load_meta(self, ps: PartitionIndex, meta: dict[str, Any]) -> None:
        ps.watermark = int(meta["wm"])

    def partition_of(self, raw: bytes) -> int:
        return UserLabels.peek(raw)[0]

    def next_due(self, raw: bytes) -> int | None:
        return UserLabels.peek(raw)[1]

    def load_user(self, raw: bytes) -> UserLabels:
        return UserLabels.from_bytes(raw)

    def new_user(self, p: int) -> UserLabels:
        return UserLabels(p)

    def encode_user(self, st: UserLabels) -> bytes:
        return st.to_bytes(self.cfg)

    async def join_partition(self, p: int, ps: PartitionIndex, users: UserCache[UserLabels],
                             events: list[Any], batch: JoinBatch) -> None:
        for ev in events:
            m = ev.message
            if m.topic == self.topics.risk_labels.name:
                joined = await self._take_label(m, ps, users, batch)
            else:
                joined = self._take_snapshot(m, ps, users)
            if joined is not None and joined[1]:
                user_key = self.pseudo.user_key(joined[0])
                for match in joined[1]:
                    await batch.emit(self.topics.risk_feedback.name, user_key,
                                     risk_feedback_record(match, user_key, self.pseudo.key_id,
                                                          batch.now_ms), p)
                    self.stats.joined += 1
        # forget what the watermark has passed (users touched now, and due ones)
        for uid in ps.pop_due(ps.watermark - 1):
            users(uid)
        for uid, st in users.items():
            self.stats.unmatched += len(st.expire(ps.watermark, self.cfg))
            ps.schedule(uid, st.next_expiry(self.cfg))

    async def _take_label(self, m: Any, ps: PartitionIndex, users: UserCache[UserLabels],
                          batch: JoinBatch) -> tuple[str, list[Match]] | None:
        """A label, validated at the edge (a bad one goes to the DLQ with its bytes), labels
        the user's kept snapshots it covers and waits for later ones."""
        try:
            rec = decode_risk_label(m.value, m.key, self.settings.max_event_bytes)
        except PoisonMessage as bad:
            self.stats.dlq += 1
            await batch.out.add(self.topics.dlq.name, m.key, dlq_record(
                bad, m.value, m.key, m.topic, m.partition, m.offset, batch.now_ms))
            return None
        self.stats.labels += 1
        lb = Label("event" if rec.event_id else "user", rec.event_id, rec.label, rec.source,
                   rec.ts)
        status, matches = users(rec.user_id).add_label(lb, self.cfg, ps.watermark)
        self.stats.unmatched += status == "unmatched"
        return rec.user_id, matches

    def _take_snapshot(self, m: Any, ps: PartitionIndex, users: UserCache[UserLabels]
                       ) -> tuple[str, list[Match]] | None:
        """A decision or alert: the risk model's snapshot of one event, joined with the
        user's waiting labels; it moves the watermark."""
        try:
            obj = orjson.loads(m.value)
            uid = str(obj["user_id"])
            snap = (snapshot_from_alert(obj) if m.topic == self.topics.risk_alerts.name
                    else snapshot_from_decision(obj))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, PoisonMessage):
            self.stats.malformed += 1  # internal topics: the worker wrote them
            return None
        if snap is None:
            self.stats.no_risk += 1
            return None
        status, matches = users(uid).add_snapshot(snap, self.cfg, ps.watermark)
        self.stats.snapshots += status == "added"
        self.stats.duplicates += status == "duplicate"
        self.stats.too_late += status == "too_late"
        ps.watermark = max(ps.watermark, snap.event_ts)
        return uid, matches


def attach_risk_labels(app: faust.App, settings: Settings, topics: Topics,
                       pseudo: Pseudonymizer) -> RiskLabelJoin:
    """Add the risk-label join (its table and agent) to the feedback app."""
    table = bytes_table(app, settings, "risk-label-join",
                        help="user id -> scored events (snapshots) and waiting risk labels")
    join = RiskLabelJoin(app, settings, topics, table, pseudo)
    join.attach_agent(bytes_topic(app, topics.decisions.name, topics.risk_alerts.name,
                                  topics.risk_labels.name),
                      f"{settings.topic_prefix}risk-label-join", topics.decisions.name)
    return join
