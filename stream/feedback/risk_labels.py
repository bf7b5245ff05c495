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

import heapq
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from faust.types import TP

from stream.errors import InfraError, PoisonMessage
from stream.feedback.privacy import Pseudonymizer
from stream.kafka.publish import BatchPublisher
from stream.schemas import decode_risk_label, dlq_record
from stream.settings import Settings
from stream.state.labels import (
    Label,
    LabelConfig,
    UserLabels,
    risk_feedback_record,
    snapshot_from_alert,
    snapshot_from_decision,
)
from stream.topics import Topics
from stream.worker.ingest import TableAccess

log = logging.getLogger(__name__)


def meta_key(p: int) -> bytes:
    """Per partition: {"wm": watermark}. User ids are never empty, so a key starting with NUL
    cannot collide with one."""
    return b"\x00meta:%d" % p


def label_config(settings: Settings) -> LabelConfig:
    return LabelConfig(window_ms=settings.label_window_s * 1000,
                       grace_ms=settings.allowed_lateness_s * 1000,
                       max_snapshots=settings.label_max_snapshots)


@dataclass
class PartitionState:
    watermark: int = 0  # latest event time of the snapshots on the partition
    due: list[tuple[int, str]] = field(default_factory=list)  # heap of (expiry, user)
    scheduled: dict[str, int] = field(default_factory=dict)  # user -> expiry in `due`


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


class RiskLabelJoin:
    """Batch processing of the join; the Faust agent below feeds it lists of events."""

    def __init__(self, app: Any, settings: Settings, topics: Topics, table: Any,
                 pseudo: Pseudonymizer) -> None:
        self.app = app
        self.settings = settings
        self.topics = topics
        self.table = table
        self.pseudo = pseudo
        self.cfg = label_config(settings)
        self.parts: dict[int, PartitionState] = {}
        self.stats = LabelStats()
        self._out: BatchPublisher | None = None

    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: their in-memory index must be rebuilt when they come back."""
        for p in partitions:
            self.parts.pop(p, None)

    def _ready(self, p: int, access: TableAccess) -> PartitionState:
        ps = self.parts.get(p)
        if ps is not None:
            return ps
        ps = PartitionState()
        raw = access.reader(p)(meta_key(p))
        if raw:
            ps.watermark = int(orjson.loads(raw)["wm"])
        for key, value in self._scan(p):
            _, nxt = UserLabels.peek(value)
            if nxt is not None:
                ps.due.append((nxt, key.decode()))
                ps.scheduled[key.decode()] = nxt
        heapq.heapify(ps.due)
        self.parts[p] = ps
        return ps

    def _scan(self, p: int) -> Iterable[tuple[bytes, bytes]]:
        store = self.table.data
        if hasattr(store, "_db_for_partition"):
            for key, value in store._db_for_partition(p).items():
                if key != store.offset_key and not key.startswith(b"\x00") and value:
                    yield key, value
            return
        for key, value in list(store.data.items()):
            if not key.startswith(b"\x00") and value and UserLabels.peek(value)[0] == p:
                yield key, value

    async def process(self, events: list[Any]) -> list[dict[str, Any]]:
        """Join one batch; returns the risk-feedback records it emitted."""
        store = self.table.data
        access = TableAccess(store)
        by_part: dict[int, list[Any]] = {}
        for ev in events:
            by_part.setdefault(ev.message.partition, []).append(ev)
        out = self._publisher()
        cfg, stats = self.cfg, self.stats
        fb_topic = self.topics.risk_feedback.name
        labels_topic = self.topics.risk_labels.name
        alerts_topic = self.topics.risk_alerts.name
        max_bytes = self.settings.max_event_bytes
        now_ms = int(time.time() * 1000)
        emitted: list[dict[str, Any]] = []
        writes: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for p, msgs in by_part.items():
            ps = self._ready(p, access)
            get = access.reader(p)
            users: dict[str, UserLabels] = {}

            def user(uid: str, p: int = p, get: Any = get,
                     users: dict[str, UserLabels] = users) -> UserLabels:
                st = users.get(uid)
                if st is None:
                    raw = get(uid.encode())
                    st = users[uid] = UserLabels.from_bytes(raw) if raw else UserLabels(p)
                return st

            for ev in msgs:
                m = ev.message
                if m.topic == labels_topic:
                    try:
                        rec = decode_risk_label(m.value, m.key, max_bytes)
                    except PoisonMessage as bad:
                        stats.dlq += 1
                        await out.add(self.topics.dlq.name, m.key, dlq_record(
                            bad, m.value, m.key, m.topic, m.partition, m.offset, now_ms))
                        continue
                    stats.labels += 1
                    lb = Label("event" if rec.event_id else "user", rec.event_id, rec.label,
                               rec.source, rec.ts)
                    status, matches = user(rec.user_id).add_label(lb, cfg, ps.watermark)
                    uid = rec.user_id
                    stats.unmatched += status == "unmatched"
                else:
                    try:
                        obj = orjson.loads(m.value)
                        uid = str(obj["user_id"])
                        snap = (snapshot_from_alert(obj) if m.topic == alerts_topic
                                else snapshot_from_decision(obj))
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        stats.malformed += 1  # internal topics: the worker wrote them
                        continue
                    if snap is None:
                        stats.no_risk += 1
                        continue
                    status, matches = user(uid).add_snapshot(snap, cfg, ps.watermark)
                    stats.snapshots += status == "added"
                    stats.duplicates += status == "duplicate"
                    stats.too_late += status == "too_late"
                    ps.watermark = max(ps.watermark, snap.event_ts)
                if matches:
                    user_key = self.pseudo.user_key(uid)
                    for match in matches:
                        fb = risk_feedback_record(match, user_key, self.pseudo.key_id, now_ms)
                        await out.add(fb_topic, user_key.encode(), orjson.dumps(fb), p)
                        emitted.append(fb)
            # forget what the watermark has passed (users touched now, and due ones)
            while ps.due and ps.due[0][0] < ps.watermark:
                deadline, uid = heapq.heappop(ps.due)
                if ps.scheduled.get(uid) == deadline:
                    del ps.scheduled[uid]
                    user(uid)
            for uid, st in users.items():
                stats.unmatched += len(st.expire(ps.watermark, cfg))
                nxt = st.next_expiry(cfg)
                if nxt is not None and ps.scheduled.get(uid) != nxt:
                    ps.scheduled[uid] = nxt
                    heapq.heappush(ps.due, (nxt, uid))
            items: list[tuple[bytes, bytes | None]] = [
                (uid.encode(), None if st.empty() else st.to_bytes(cfg))
                for uid, st in users.items()]
            items.append((meta_key(p), orjson.dumps({"wm": ps.watermark})))
            writes[p] = items
        stats.joined += len(emitted)
        changelog = self.table.changelog_topic.get_topic_name()
        try:
            # 1. the records (and DLQ), 2. the state: a crash in between repeats records,
            # never loses one
            await out.flush()
            for p, items in writes.items():
                for key, value in items:
                    await out.add(changelog, key, value, p)
            saved = await out.flush()
        except Exception as exc:
            out.discard()
            raise InfraError(f"publishing risk feedback failed: {exc!r}") from exc
        for p, items in writes.items():
            access.apply(p, items)
        access.mark_persisted(changelog, saved)
        return emitted

    def _publisher(self) -> BatchPublisher:
        if self._out is None:
            self._out = BatchPublisher(self.app.producer._ensure_producer())
        return self._out


def attach_risk_labels(app: faust.App, settings: Settings, topics: Topics,
                       pseudo: Pseudonymizer) -> RiskLabelJoin:
    """Add the risk-label join (its table and agent) to the feedback app."""
    table = app.Table(f"{settings.topic_prefix}risk-label-join", partitions=settings.partitions,
                      key_type=bytes, value_type=bytes,
                      help="user id -> scored events (snapshots) and waiting risk labels")
    join = RiskLabelJoin(app, settings, topics, table, pseudo)
    source = app.topic(topics.decisions.name, topics.risk_alerts.name, topics.risk_labels.name,
                       key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw")

    @app.agent(source, name=f"{settings.topic_prefix}risk-label-join")
    async def risk_label_join(stream: Any) -> None:
        async for events in stream.take_events(1000, within=0.05):
            await join.process(list(events))

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        join.forget({tp.partition for tp in revoked if tp.topic == topics.decisions.name})

    return join
