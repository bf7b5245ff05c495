"""The named steps of one ingest batch: decode, fold into state, stage the states, decide, log.

stream.worker.ingest runs them in this order (the model call between fold and stage is the
agent's, for its thread pool and predictor holder; the changelog, last, waits for the
outputs' acks). They run for every event, so each keeps
the loop it had inline: locals for what the loop reads, no per-event copies.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from faust.types import Message
from prometheus_client import Counter

from model.types import Prediction, PredictionContext
from stream.errors import PoisonMessage
from stream.kafka.publish import BatchPublisher
from stream.records import alert_record, decision_record, dlq_record, recommendation_record
from stream.schemas import Event, decode_event
from stream.state.features import FeatureConfig, UserState
from stream.state.table import TableAccess
from stream.worker.recent import LastDecision, RecentDecisions

Batch = list[tuple[Message, float]]  # (message, receipt time, monotonic)
# partition -> user id -> the user's valid events with their receipt times, in order
Grouped = dict[int, dict[str, list[tuple[Event, float]]]]
Reader = Callable[[bytes], bytes | None]


@dataclass
class Pending:
    """One valid, non-duplicate event waiting for its decision."""

    event: Event
    recv: float
    ctx: PredictionContext
    partition: int  # of the event on `events`: where its outputs go (co-partitioning)


@dataclass
class BatchStats:
    events: int = 0
    dlq: int = 0
    duplicates: int = 0
    late: int = 0
    recommendations: int = 0
    alerts: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    first_batch_at: float | None = None  # wall clock, for throughput over the busy span
    last_batch_at: float | None = None


@dataclass(frozen=True)
class Outputs:
    """Where decisions go, fixed for the worker's life."""

    recommendations: str
    risk_alerts: str
    decisions: str | None  # None: the decision log is off
    dlq: str
    risk_threshold: float


async def decode(batch: Batch, max_bytes: int, out: BatchPublisher, dlq_topic: str,
                 stats: BatchStats, dlq_count: Counter, now_ms: int) -> Grouped:
    """1. Decode at the edge; group valid events by partition, then user, in order. A record
    that is not a valid event keyed by its user id goes to the DLQ with its bytes
    (`dlq_count`: the metric)."""
    by_part: Grouped = {}
    for m, recv in batch:
        try:
            ev = decode_event(m.value, m.key, max_bytes, True)
        except PoisonMessage as bad:
            stats.dlq += 1
            dlq_count.labels(error_kind=bad.kind).inc()
            await out.add(dlq_topic, m.key, dlq_record(bad, m.value, m.key, m.topic,
                                                       m.partition, m.offset, now_ms))
            continue
        users = by_part.get(m.partition)
        if users is None:
            users = by_part[m.partition] = {}
        evs = users.get(ev.user_id)
        if evs is None:
            users[ev.user_id] = [(ev, recv)]
        else:
            evs.append((ev, recv))
    return by_part


def reader(table: TableAccess, overlay: dict[int, dict[bytes, bytes]], partition: int
           ) -> Reader:
    """Reads of the partition's states: those of the batch in flight (`overlay`, not stored
    yet) first, then the store."""
    stored = table.reader(partition)
    newer = overlay.get(partition)
    if newer is None:
        return stored

    def get(key: bytes) -> bytes | None:
        raw = newer.get(key)
        return raw if raw is not None else stored(key)
    return get


def fold(by_part: Grouped, read: Callable[[int], Reader], cfg: FeatureConfig,
         recommend_on: tuple[str, ...], top_k: int, now_ms: int, stats: BatchStats,
         keep_seq: bool = False) -> tuple[list[Pending], list[tuple[int, bytes, UserState]]]:
    """2. Fold the events into their users' states: one read per user per batch. Returns the
    events to decide, and per user (partition, key, state) to store.

    keep_seq (the predictor keeps sequence states, model.predictor.keeps_seq_state): a
    user's first event of the batch carries the stored state (b"": start one), a later one
    b"": the state after the event before it is only computed in this same model call, which
    steps from that one (model.serving.ModelPredictor), and stepping the stored state past it
    would skip it."""
    pending: list[Pending] = []
    states: list[tuple[int, bytes, UserState]] = []
    n_windows = len(cfg.windows_s)
    for partition, users in by_part.items():
        get = read(partition)
        for user_id, events in users.items():
            key = user_id.encode()
            raw = get(key)
            st = UserState.from_bytes(raw, n_windows) if raw else UserState(user_id, n_windows)
            first = True
            for ev, recv in events:
                res = st.apply(ev, cfg, now_ms)
                if res.duplicate:
                    stats.duplicates += 1
                    continue
                if res.late:
                    stats.late += 1
                ctx = PredictionContext(
                    user_id, ev.event_id, ev.item_id, ev.type, ev.ts, ev.category,
                    st.sequence(), st.numeric_features(cfg, ev),
                    ev.type in recommend_on, top_k)
                if keep_seq:  # after apply: a TTL reset there drops the stored state
                    ctx.seq_state = (st.seq_state or b"") if first else b""
                    first = False
                pending.append(Pending(ev, recv, ctx, partition))
            states.append((partition, key, st))
    return pending, states


def keep_seq_states(pending: list[Pending], predictions: list[Prediction],
                    states: list[tuple[int, bytes, UserState]]) -> None:
    """3b. Each user's sequence state after its last event of the batch, into the user's
    state before it is staged: stored and sent to the changelog with the rest of it (None
    when that event got none: the next one re-encodes rather than step a state behind)."""
    by_user = {st.user_id: st for _, _, st in states}
    for p, pred in zip(pending, predictions, strict=True):
        by_user[p.ctx.user_id].seq_state = pred.seq_state


def stage_states(states: list[tuple[int, bytes, UserState]],
                 overlay: dict[int, dict[bytes, bytes]]) -> dict[int, list[tuple[bytes, bytes]]]:
    """4. The states into the overlay for the next batch; their changelog records are sent
    only once the batch's outputs are acknowledged (add_changelog), and the local store is
    written only once the broker has everything (IngestAgent.complete), so a batch that fails
    to publish leaves no trace and its retry decides again instead of seeing duplicates.
    Returns partition -> items."""
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    for partition, key, st in states:
        value = st.to_bytes()
        by_partition.setdefault(partition, []).append((key, value))
        part_overlay = overlay.get(partition)
        if part_overlay is None:
            part_overlay = overlay[partition] = {}
        part_overlay[key] = value
    return by_partition


async def add_changelog(by_partition: dict[int, list[tuple[bytes, bytes]]], out: BatchPublisher,
                        changelog: str) -> None:
    """6. The batch's changelog records (same partition as the source), to send once its
    outputs are acknowledged: a state on the broker never holds an event whose outputs are
    not, so a redelivered event found there as a duplicate needs no outputs again."""
    for partition, items in by_partition.items():
        for key, value in items:
            await out.add(changelog, key, value, partition)


async def decide(pending: list[Pending], predictions: list[Prediction], out: BatchPublisher,
                 to: Outputs, stats: BatchStats, recent: RecentDecisions) -> None:
    """5. Per event: remember it for the dashboard; publish its recommendation (and decision
    log record) when it asked for one, and a risk alert when its score reaches the
    threshold."""
    threshold, rec_topic, decisions_topic = to.risk_threshold, to.recommendations, to.decisions
    if not pending:
        recent.rotate()
        return
    # each output on its event's partition number (Kafka Streams' co-partitioning rule): the
    # joins read events and decisions partition by partition, and a producer's partitioner
    # may not be murmur2. A topic with fewer partitions than `events` falls back to murmur2.
    n_rec = await out.partition_count(rec_topic)
    n_dec = await out.partition_count(decisions_topic) if decisions_topic is not None else 0
    n_alert = await out.partition_count(to.risk_alerts)
    # locals: the loop runs per event (they pay for the builders' two calls per event)
    add, dumps, encode_last = out.add, orjson.dumps, LastDecision.encode
    monotonic, wall = time.monotonic, time.time
    latest, add_latency = recent.latest, stats.latencies_ms.append
    n_recs = stats.recommendations
    for p, pred in zip(pending, predictions, strict=True):
        ev, part = p.event, p.partition
        key = ev.user_id.encode()
        latest[ev.user_id] = encode_last(ev, pred)
        if p.ctx.recommend:  # cold start: may be empty until the model knows items
            lat = (monotonic() - p.recv) * 1000
            rec = recommendation_record(ev, pred, lat, int(wall() * 1000))
            await add(rec_topic, key, dumps(rec), part if part < n_rec else None)
            if decisions_topic is not None:  # issue #5: the feedback join's input
                await add(decisions_topic, key, decision_record(rec, p.ctx, pred, threshold),
                          part if part < n_dec else None)
            n_recs += 1
            add_latency(lat)
            if n_recs % 50 == 1:
                recent.remember("recommendation", rec)
        if pred.risk.score >= threshold:
            lat = (monotonic() - p.recv) * 1000
            alert = alert_record(ev, pred, p.ctx, threshold, lat, int(wall() * 1000))
            await add(to.risk_alerts, key, dumps(alert), part if part < n_alert else None)
            stats.alerts += 1
            recent.remember("risk_alert", alert)
    stats.recommendations = n_recs
    recent.rotate()
