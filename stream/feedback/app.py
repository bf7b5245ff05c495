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
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import faust
import orjson
from kafka import TopicPartition
from pydantic import TypeAdapter, ValidationError

from stream.errors import InfraError, LamstreamError, PoisonMessage
from stream.feedback.privacy import Pseudonymizer
from stream.feedback.risk_labels import RiskLabelJoin, attach_risk_labels
from stream.feedback.web import serve_probes
from stream.kafka.admin import ensure_topics
from stream.kafka.consumers import kafka_consumer
from stream.kafka.faust_app import bytes_table, bytes_topic, new_faust_app, run_until_stopped
from stream.kafka.recovery import install_exact_highwaters
from stream.records import feedback_record, read_decision
from stream.schemas import EpochMs
from stream.settings import Settings
from stream.state.joins import JoinBatch, PartitionedJoin, PartitionIndex, UserCache
from stream.state.rewards import JoinConfig, UserJoin
from stream.state.table import TableAccess
from stream.topics import Topics, topics_for

log = logging.getLogger(__name__)

_EPOCH_MS: TypeAdapter[int] = TypeAdapter(EpochMs)


@dataclass
class RewardPartition(PartitionIndex):
    """Per partition; `watermark` is the latest event time on the events partition (it
    closes windows)."""

    decisions_wm: int = 0  # latest trigger time on the decisions partition: dedupe horizon
    fb_next: int = 0  # next offset of feedback partition p (where a read-back starts)
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
    policies: dict[str, list[int]] = field(default_factory=dict)  # policy -> [feedback, rewarded]

    def add_feedback(self, policy: str, rewarded: bool) -> None:
        self.feedback += 1
        self.rewarded += rewarded
        counts = self.policies.setdefault(policy, [0, 0])
        counts[0] += 1
        counts[1] += rewarded


def join_config(settings: Settings) -> JoinConfig:
    return JoinConfig(window_ms=settings.feedback_window_s * 1000,
                      lateness_ms=settings.allowed_lateness_s * 1000,
                      rewards=tuple(sorted(settings.feedback_rewards.items())),
                      max_pending=settings.feedback_max_pending)


class FeedbackJoin(PartitionedJoin[RewardPartition, UserJoin]):
    """The reward join's records (stream.state.joins drives the batches)."""

    what = "feedback"

    def __init__(self, app: Any, settings: Settings, topics: Topics, table: Any) -> None:
        super().__init__(app, table)
        self.settings = settings
        self.topics = topics
        self.cfg = join_config(settings)
        self.pseudo = Pseudonymizer(settings.pseudonym_key)
        self.engage_types = frozenset(self.cfg.reward_of)
        self.stats = JoinStats()
        # tests: die like SIGKILL right after the N-th batch's feedback is acked and before
        # the state is saved, the one moment a naive join would emit twice after a restart
        self.crash_after_emit = int(os.environ.get("LAMSTREAM_TEST_CRASH_AFTER_EMIT", "0"))

    # -- partition ownership -------------------------------------------------------------
    async def restore(self, p: int, access: TableAccess) -> RewardPartition:
        """The saved index, and the rec ids emitted after it was saved (read back)."""
        ps = await super().restore(p, access)
        loop = asyncio.get_running_loop()
        ps.emitted, end = await loop.run_in_executor(None, self._read_back, p, ps.fb_next)
        ps.fb_next = max(ps.fb_next, end)
        if ps.emitted:
            log.warning("feedback partition %d: %d records emitted after the last saved state "
                        "(a crash); they will not be emitted again", p, len(ps.emitted))
        return ps

    def new_partition(self) -> RewardPartition:
        return RewardPartition()

    def meta(self, ps: RewardPartition) -> dict[str, Any]:
        return {"wm": ps.watermark, "dwm": ps.decisions_wm, "fb_next": ps.fb_next}

    def load_meta(self, ps: RewardPartition, meta: dict[str, Any]) -> None:
        ps.watermark, ps.fb_next = int(meta["wm"]), int(meta["fb_next"])
        ps.decisions_wm = int(meta["dwm"])

    def partition_of(self, raw: bytes) -> int:
        return UserJoin.partition_of(raw)

    def next_due(self, raw: bytes) -> int | None:
        return UserJoin.from_bytes(raw).next_deadline(self.cfg)

    def _read_back(self, p: int, start: int) -> tuple[set[str], int]:
        """Rec ids in feedback partition p from `start` to the end, and the end offset.

        Reads until two polls in a row come back empty rather than up to ListOffsets
        "latest", which tansu under-reports (see stream.kafka.admin.seek_to_end). Nobody else
        writes this partition: it belongs to the input partition this worker now owns."""
        tp = TopicPartition(self.topics.feedback.name, p)
        consumer = kafka_consumer(self.settings, "lamstream-feedback-readback",
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

    # -- users -------------------------------------------------------------------------------
    def load_user(self, raw: bytes) -> UserJoin:
        return UserJoin.from_bytes(raw)

    def new_user(self, p: int) -> UserJoin:
        return UserJoin(p)

    def encode_user(self, st: UserJoin) -> bytes:
        return st.to_bytes()

    # -- one batch -----------------------------------------------------------------------
    async def join_partition(self, p: int, ps: RewardPartition, users: UserCache[UserJoin],
                             events: list[Any], batch: JoinBatch) -> None:
        too_late = sum(self._take(ev.message, ps, users) for ev in events)
        if too_late:
            log.info("partition %d: %d decisions older than the dedupe horizon dropped "
                     "(re-deliveries after a restart, or a worker far behind)", p, too_late)
        # close what the watermark has passed (users touched now, and due ones)
        for uid in ps.pop_due(ps.watermark - self.cfg.lateness_ms):
            users(uid)
        for uid, st in users.items():
            await self._close(p, ps, uid, st, batch)
            ps.schedule(uid, st.next_deadline(self.cfg))

    def _take(self, m: Any, ps: RewardPartition, users: UserCache[UserJoin]) -> int:
        """One decision or event into its user's state; 1 for a decision too old to join."""
        try:
            obj = orjson.loads(m.value)
            if m.topic == self.topics.decisions.name:
                return self._take_decision(read_decision(obj), ps, users)
            ts = self._take_event(m.key, obj, users)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, ValidationError,
                AttributeError, PoisonMessage):
            self.stats.malformed += 1  # the worker sends bad events to the DLQ
            return 0
        if ts > ps.watermark:
            ps.watermark = ts
        return 0

    def _take_decision(self, obj: dict[str, Any], ps: RewardPartition,
                       users: UserCache[UserJoin]) -> int:
        uid, ts = obj["user_id"], int(obj["event_ts"])
        obj["items"], obj["sequence"], obj["features"]  # noqa: B018 - required
        status = users(uid).add_decision(obj, self.cfg, ps.decisions_wm)
        ps.decisions_wm = max(ps.decisions_wm, ts)
        if status == "added":
            self.stats.decisions += 1
        elif status == "duplicate":
            self.stats.duplicates += 1
        else:
            self.stats.too_late += 1
            return 1
        return 0

    def _take_event(self, key: bytes | None, obj: dict[str, Any],
                    users: UserCache[UserJoin]) -> int:
        """An engagement credits the decisions that showed its item; every event moves the
        watermark (returns its time)."""
        uid, typ = obj["user_id"], obj["type"]
        ts = obj["ts"]
        if type(ts) is not int:
            ts = _EPOCH_MS.validate_python(ts)
        if key != uid.encode():  # unkeyed or keyed otherwise: the worker's DLQ has it
            raise PoisonMessage("key_mismatch", "record key differs from the user id")
        if typ in self.engage_types:
            users(uid).add_engagement(ts, typ, str(obj["item_id"]), str(obj["event_id"]),
                                      self.cfg)
            self.stats.engagements += 1
        return int(ts)

    async def _close(self, p: int, ps: RewardPartition, uid: str, st: UserJoin,
                     batch: JoinBatch) -> None:
        """Emit the feedback of the user's decisions whose window the watermark has closed,
        except those the read-back found already emitted."""
        for o in st.close_due(ps.watermark, self.cfg, min(ps.watermark, ps.decisions_wm)):
            if o.decision["rec_id"] in ps.emitted:
                self.stats.suppressed += 1
                continue
            user_key = self.pseudo.user_key(uid)
            await batch.emit(self.topics.feedback.name, user_key,
                             feedback_record(o, user_key, self.pseudo.key_id, batch.now_ms), p)
            self.stats.add_feedback(str(o.decision.get("policy", "greedy")), o.reward > 0)

    def after_emit(self, acked: dict[tuple[str, int], int], batch: JoinBatch) -> None:
        """Feedback first: once acked, a crash before the state is saved is caught by the
        read-back on restart; the meta record keeps where the read-back starts."""
        fb_topic = self.topics.feedback.name
        for (topic, p), offset in acked.items():
            if topic == fb_topic:
                self.parts[p].fb_next = offset + 1
        if self.crash_after_emit and batch.emitted:
            self.crash_after_emit -= 1
            if not self.crash_after_emit:  # fault injection for the exactly-once test
                log.error("crashing on purpose after emitting feedback, before saving")
                os._exit(137)


@dataclass
class FeedbackWorker:
    app: faust.App
    join: FeedbackJoin
    risk: RiskLabelJoin


def create_feedback_app(settings: Settings) -> FeedbackWorker:
    """The feedback join as its own Faust app (consumer group `<app_id>-feedback`), with the
    risk-label join (stream.feedback.risk_labels) beside it."""
    topics = topics_for(settings)
    if settings.pseudonym_key is None:
        raise LamstreamError("LAMSTREAM_PSEUDONYM_KEY must be set: feedback records carry a "
                             "keyed pseudonym instead of the user id")
    app = new_faust_app(settings, f"{settings.app_id}-feedback", "faust-feedback",
                        web_enabled=False)
    table = bytes_table(app, settings, "feedback-join",
                        help="user id -> pending decisions, engagements, emitted rec ids")
    install_exact_highwaters(app, settings)  # tansu under-reports changelog ends
    join = FeedbackJoin(app, settings, topics, table)
    join.attach_agent(bytes_topic(app, topics.decisions.name, topics.events.name),
                      f"{settings.topic_prefix}feedback-join", topics.decisions.name)
    risk = attach_risk_labels(app, settings, topics, join.pseudo)
    return FeedbackWorker(app=app, join=join, risk=risk)


def run_feedback(settings: Settings) -> None:
    """`lamstream feedback`: run the join until SIGTERM / Ctrl-C, with its /health and
    /metrics (stream.feedback.web) on FEEDBACK_WEB_PORT."""
    ensure_topics(settings)
    fw = create_feedback_app(settings)
    with serve_probes(fw, settings):
        run_until_stopped(fw.app, settings)
