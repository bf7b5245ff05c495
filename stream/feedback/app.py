"""The feedback agent: join decisions with later engagements into one `feedback` record each.

Runs as its own Faust app (`lamstream feedback`, consumer group `<app_id>-feedback`) because
the worker's fast path owns the `events` topic in the worker's group. It reads `decisions`
and `events`, both keyed by user id with the same partition count (co-partitioned), so one
table partition holds everything about the users of one input partition.

Exactly one feedback record per rec_id, also across a SIGKILL:
  * feedback for input partition p goes to feedback partition p (key: the pseudonym), so a
    partition's owner alone writes it;
  * per batch: send the feedback records and wait for the acks; then write the users' states
    (closed rec ids move to `done`) and, last, a per-partition meta record holding the next
    feedback offset, to the table's changelog and wait for those acks; then ack the inputs;
  * on taking over partition p (start, restart, rebalance) the agent reads feedback partition
    p from the meta's offset to the end: records there were emitted after the last persisted
    state, so their rec ids count as done when the replayed inputs close them again.
Duplicated decisions (at-least-once from the worker) and duplicated events are ignored.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from faust.types import TP
from kafka import TopicPartition
from pydantic import TypeAdapter, ValidationError

from stream.client import _consumer
from stream.errors import InfraError, LamstreamError
from stream.feedback.privacy import Pseudonymizer
from stream.feedback.risk_labels import RiskLabelJoin, attach_risk_labels
from stream.kafka.publish import BatchPublisher
from stream.schemas import EpochMs
from stream.settings import Settings
from stream.state.rewards import JoinConfig, Outcome, UserJoin
from stream.topics import Topics, topics_for
from stream.worker.ingest import TableAccess

log = logging.getLogger(__name__)

_EPOCH_MS: TypeAdapter[int] = TypeAdapter(EpochMs)


def meta_key(p: int) -> bytes:
    """Per partition: {"wm": watermark, "fb_next": next feedback offset}. User ids are never
    empty, so a key starting with NUL cannot collide with one."""
    return b"\x00meta:%d" % p


@dataclass
class PartitionState:
    watermark: int = 0  # latest event time on the events partition: closes windows
    decisions_wm: int = 0  # latest trigger time on the decisions partition: dedupe horizon
    fb_next: int = 0
    due: list[tuple[int, str]] = field(default_factory=list)  # heap of (deadline, user)
    scheduled: dict[str, int] = field(default_factory=dict)  # user -> deadline in `due`
    emitted: set[str] = field(default_factory=set)  # rec ids found by the read-back


@dataclass
class JoinStats:
    decisions: int = 0
    duplicates: int = 0
    engagements: int = 0
    feedback: int = 0
    rewarded: int = 0
    too_late: int = 0
    suppressed: int = 0  # closed again after a crash, already in the feedback topic
    malformed: int = 0


def join_config(settings: Settings) -> JoinConfig:
    return JoinConfig(window_ms=settings.feedback_window_s * 1000,
                      lateness_ms=settings.allowed_lateness_s * 1000,
                      rewards=tuple(sorted(settings.feedback_rewards.items())),
                      max_pending=settings.feedback_max_pending)


def feedback_record(o: Outcome, user_key: str, key_id: str, now_ms: int) -> dict[str, Any]:
    """The wire record (stream.schemas.Feedback): the decision's own snapshot, no raw ids."""
    d = o.decision
    return {
        "rec_id": d["rec_id"], "user_key": user_key, "key_id": key_id,
        "features": d["features"], "sequence": d["sequence"], "category": d.get("category"),
        "shown": d["items"], "candidates": d.get("candidates") or d["items"],
        "engaged_item": o.engaged_item, "engaged_type": o.engaged_type, "reward": o.reward,
        "model": d["model"], "model_version": d["model_version"], "policy": d["policy"],
        "explored": bool(d.get("explored", False)),
        "shadow_policy": d.get("shadow_policy"), "shadow_inclusion": d.get("shadow_inclusion"),
        "base_scores": d.get("base_scores"),
        "candidate_categories": d.get("candidate_categories"),
        "recent_categories": d.get("recent_categories"),
        "decision_ts": d["event_ts"], "outcome_ts": o.outcome_ts, "emitted_at": now_ms,
    }


class FeedbackJoin:
    """Batch processing of the join; the Faust agent below feeds it lists of events."""

    def __init__(self, app: Any, settings: Settings, topics: Topics, table: Any) -> None:
        self.app = app
        self.settings = settings
        self.topics = topics
        self.table = table
        self.cfg = join_config(settings)
        self.pseudo = Pseudonymizer(settings.pseudonym_key)
        self.engage_types = frozenset(self.cfg.reward_of)
        self.parts: dict[int, PartitionState] = {}
        self.stats = JoinStats()
        self._out: BatchPublisher | None = None
        # tests: die like SIGKILL right after the N-th batch's feedback is acked and before
        # the state is saved, the one moment a naive join would emit twice after a restart
        self.crash_after_emit = int(os.environ.get("LAMSTREAM_TEST_CRASH_AFTER_EMIT", "0"))

    # -- partition ownership -------------------------------------------------------------
    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: their in-memory index must be rebuilt when they come back."""
        for p in partitions:
            self.parts.pop(p, None)

    async def _ready(self, p: int, access: TableAccess) -> PartitionState:
        ps = self.parts.get(p)
        if ps is not None:
            return ps
        ps = PartitionState()
        raw = access.reader(p)(meta_key(p))
        if raw:
            meta = orjson.loads(raw)
            ps.watermark, ps.fb_next = int(meta["wm"]), int(meta["fb_next"])
            ps.decisions_wm = int(meta["dwm"])
        loop = asyncio.get_running_loop()
        ps.emitted, end = await loop.run_in_executor(None, self._read_back, p, ps.fb_next)
        ps.fb_next = max(ps.fb_next, end)
        for key, value in self._scan(p):
            st = UserJoin.from_bytes(value)
            deadline = st.next_deadline(self.cfg)
            if deadline is not None:
                ps.due.append((deadline, key.decode()))
                ps.scheduled[key.decode()] = deadline
        heapq.heapify(ps.due)
        if ps.emitted:
            log.warning("feedback partition %d: %d records emitted after the last saved state "
                        "(a crash); they will not be emitted again", p, len(ps.emitted))
        self.parts[p] = ps
        return ps

    def _read_back(self, p: int, start: int) -> tuple[set[str], int]:
        """Rec ids in feedback partition p from `start` to the end, and the end offset.

        Reads until two polls in a row come back empty rather than up to ListOffsets
        "latest", which tansu under-reports (see stream.kafka.admin.seek_to_end). Nobody else
        writes this partition: it belongs to the input partition this worker now owns."""
        tp = TopicPartition(self.topics.feedback.name, p)
        consumer = _consumer(self.settings, "lamstream-feedback-readback",
                             enable_auto_commit=False, fetch_max_wait_ms=100)
        found: set[str] = set()
        end = start
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            deadline = time.monotonic() + 120
            empty = 0
            while empty < 2:
                if time.monotonic() > deadline:
                    raise InfraError(f"reading back feedback partition {p} timed out")
                batch = consumer.poll(timeout_ms=200, max_records=100_000)
                empty = 0 if batch else empty + 1
                for records in batch.values():
                    for r in records:
                        end = max(end, r.offset + 1)
                        try:
                            found.add(orjson.loads(r.value)["rec_id"])
                        except (orjson.JSONDecodeError, KeyError, TypeError):
                            continue
            return found, end
        finally:
            consumer.close()

    def _scan(self, p: int) -> Iterable[tuple[bytes, bytes]]:
        store = self.table.data
        if hasattr(store, "_db_for_partition"):
            for key, value in store._db_for_partition(p).items():
                if key != store.offset_key and not key.startswith(b"\x00") and value:
                    yield key, value
            return
        for key, value in list(store.data.items()):
            if not key.startswith(b"\x00") and value and _partition_of(value) == p:
                yield key, value

    # -- one batch -----------------------------------------------------------------------
    async def process(self, events: list[Any]) -> list[dict[str, Any]]:
        """Join one batch; returns the feedback records it emitted."""
        store = self.table.data
        access = TableAccess(store)
        by_part: dict[int, list[Any]] = {}
        for ev in events:
            by_part.setdefault(ev.message.partition, []).append(ev)
        out = self._publisher()
        fb_topic = self.topics.feedback.name
        decisions_topic = self.topics.decisions.name
        now_ms = int(time.time() * 1000)
        emitted: list[dict[str, Any]] = []
        writes: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for p, msgs in by_part.items():
            ps = await self._ready(p, access)
            get = access.reader(p)
            users: dict[str, UserJoin] = {}
            too_late = 0

            def user(uid: str, p: int = p, get: Any = get,
                     users: dict[str, UserJoin] = users) -> UserJoin:
                st = users.get(uid)
                if st is None:
                    raw = get(uid.encode())
                    st = users[uid] = UserJoin.from_bytes(raw) if raw else UserJoin(p)
                return st

            for ev in msgs:
                m = ev.message
                try:
                    obj = orjson.loads(m.value)
                    if m.topic == decisions_topic:
                        uid, ts = obj["user_id"], int(obj["event_ts"])
                        obj["items"], obj["sequence"], obj["features"]  # noqa: B018 - required
                        st = user(uid)
                        status = st.add_decision(obj, self.cfg, ps.decisions_wm)
                        if status == "added":
                            self.stats.decisions += 1
                        elif status == "duplicate":
                            self.stats.duplicates += 1
                        else:
                            self.stats.too_late += 1
                            too_late += 1
                        ps.decisions_wm = max(ps.decisions_wm, ts)
                        continue
                    else:
                        uid, typ = obj["user_id"], obj["type"]
                        ts = obj["ts"]
                        if type(ts) is not int:
                            ts = _EPOCH_MS.validate_python(ts)
                        if m.key is not None and m.key != uid.encode():
                            raise ValueError("key mismatch")  # the worker's DLQ has it
                        if typ in self.engage_types:
                            user(uid).add_engagement(ts, typ, str(obj["item_id"]),
                                                     str(obj["event_id"]), self.cfg)
                            self.stats.engagements += 1
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError,
                        ValidationError, AttributeError):
                    self.stats.malformed += 1  # the worker sends bad events to the DLQ
                    continue
                if ts > ps.watermark:
                    ps.watermark = ts
            if too_late:
                log.info("partition %d: %d decisions older than the dedupe horizon dropped "
                         "(re-deliveries after a restart, or a worker far behind)", p, too_late)
            # close what the watermark has passed (users touched now, and due ones)
            limit = ps.watermark - self.cfg.lateness_ms
            while ps.due and ps.due[0][0] <= limit:
                deadline, uid = heapq.heappop(ps.due)
                if ps.scheduled.get(uid) == deadline:
                    del ps.scheduled[uid]
                    user(uid)
            for uid, st in users.items():
                keep_from = min(ps.watermark, ps.decisions_wm)
                for o in st.close_due(ps.watermark, self.cfg, keep_from):
                    rec_id = o.decision["rec_id"]
                    if rec_id in ps.emitted:
                        self.stats.suppressed += 1
                        continue
                    rec = feedback_record(o, self.pseudo.user_key(uid), self.pseudo.key_id,
                                          now_ms)
                    await out.add(fb_topic, rec["user_key"].encode(), orjson.dumps(rec), p)
                    emitted.append(rec)
                    self.stats.feedback += 1
                    self.stats.rewarded += o.reward > 0
                nxt = st.next_deadline(self.cfg)
                if nxt is not None and ps.scheduled.get(uid) != nxt:
                    ps.scheduled[uid] = nxt
                    heapq.heappush(ps.due, (nxt, uid))
            writes[p] = [(uid.encode(), None if st.empty() else st.to_bytes())
                         for uid, st in users.items()]
        # 1. feedback first: once acked, a crash before the state is saved is caught by the
        #    read-back on restart
        try:
            last = await out.flush()
            for (topic, p), offset in last.items():
                if topic == fb_topic:
                    self.parts[p].fb_next = offset + 1
            if self.crash_after_emit and emitted:
                self.crash_after_emit -= 1
                if not self.crash_after_emit:  # fault injection for the exactly-once test
                    log.error("crashing on purpose after emitting feedback, before saving")
                    os._exit(137)
            # 2. the users' states, then the meta record, in one changelog partition each
            changelog = self.table.changelog_topic.get_topic_name()
            for p, items in writes.items():
                ps = self.parts[p]
                items.append((meta_key(p), orjson.dumps({
                    "wm": ps.watermark, "dwm": ps.decisions_wm, "fb_next": ps.fb_next})))
                for key, value in items:
                    await out.add(changelog, key, value, p)
            saved = await out.flush()
        except Exception as exc:
            raise InfraError(f"publishing feedback failed: {exc!r}") from exc
        for p, items in writes.items():
            access.apply(p, items)
        access.mark_persisted(changelog, saved)
        return emitted

    def _publisher(self) -> BatchPublisher:
        if self._out is None:
            self._out = BatchPublisher(self.app.producer._ensure_producer())
        return self._out


def _partition_of(value: bytes) -> int:
    try:
        return int(orjson.loads(value)["p"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return -1


@dataclass
class FeedbackWorker:
    app: faust.App
    join: FeedbackJoin
    risk: RiskLabelJoin


def create_feedback_app(settings: Settings) -> FeedbackWorker:
    """The feedback join as its own Faust app (consumer group `<app_id>-feedback`), with the
    risk-label join (stream.feedback.risk_labels) beside it."""
    from stream.kafka.recovery import install_exact_highwaters
    from stream.worker.app import new_faust_app

    topics = topics_for(settings)
    if settings.pseudonym_key is None:
        raise LamstreamError("LAMSTREAM_PSEUDONYM_KEY must be set: feedback records carry a "
                             "keyed pseudonym instead of the user id")
    app = new_faust_app(settings, f"{settings.app_id}-feedback", "faust-feedback",
                        web_enabled=False)
    table = app.Table(f"{settings.topic_prefix}feedback-join", partitions=settings.partitions,
                      key_type=bytes, value_type=bytes,
                      help="user id -> pending decisions, engagements, emitted rec ids")
    install_exact_highwaters(app, settings)  # tansu under-reports changelog ends
    join = FeedbackJoin(app, settings, topics, table)
    source = app.topic(topics.decisions.name, topics.events.name, key_type=bytes,
                       value_type=bytes, key_serializer="raw", value_serializer="raw")

    @app.agent(source, name=f"{settings.topic_prefix}feedback-join")
    async def feedback_join(stream: Any) -> None:
        async for events in stream.take_events(1000, within=0.05):
            await join.process(list(events))

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def _revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
        join.forget({tp.partition for tp in revoked if tp.topic == topics.decisions.name})

    risk = attach_risk_labels(app, settings, topics, join.pseudo)
    return FeedbackWorker(app=app, join=join, risk=risk)


def run_feedback(settings: Settings) -> None:
    """`lamstream feedback`: run the join until SIGTERM / Ctrl-C."""
    from stream.kafka.admin import ensure_topics

    ensure_topics(settings)
    from stream.worker.app import run_until_stopped

    run_until_stopped(create_feedback_app(settings).app, settings)
