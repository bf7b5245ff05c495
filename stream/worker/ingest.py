"""The ingest agent: validate events, update per-user features, predict, publish decisions."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from faust.streams import _current_event
from faust.types import TP, Message
from mode import Service
from rocksdict import WriteBatch

from model.predictor import Predictor
from model.recommenders.baseline import BaselinePredictor
from model.types import Prediction, PredictionContext
from stream.errors import InfraError, PoisonMessage
from stream.kafka.fastpath import BatchSink, register_sink
from stream.kafka.publish import BatchPublisher, Sent
from stream.schemas import Event, decode_event, dlq_record
from stream.settings import Settings
from stream.state.features import FeatureConfig, UserState
from stream.topics import Topics
from stream.worker.decision_log import decision_record
from stream.worker.metrics import Metrics

log = logging.getLogger(__name__)


class _Msg:
    __slots__ = ("partition",)

    def __init__(self, partition: int) -> None:
        self.partition = partition


class _PartitionEvent:
    """Stands in for Faust's current event while we touch the table for one partition.

    Faust's table stores route reads/writes to the RocksDB database of the *source* partition
    and need that partition to send changelog records; they find it through the current
    event, which does not exist outside per-message stream iteration (faust #497: "Cannot
    modify table key from outside of stream iteration"). Our batches know each record's
    partition, so we say it explicitly.
    """

    __slots__ = ("message", "__weakref__")

    def __init__(self, partition: int) -> None:
        self.message = _Msg(partition)


@contextlib.contextmanager
def partition_context(partition: int) -> Iterator[None]:
    ev = _PartitionEvent(partition)
    token = _current_event.set(weakref.ref(ev))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


class TableAccess:
    """Per-partition reads and writes of the features table, without Faust's per-call layers.

    Our keys and values are already bytes, so Faust's codec layer has nothing to do; with
    RocksDB we go straight to the partition's database (what Faust's store does after looking
    up the current event), otherwise through the store's mapping interface under an explicit
    partition context.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.rocks = hasattr(store, "_db_for_partition") and hasattr(store, "_key_index")
        # rocksdict (Faust's default RocksDB driver): a batch's keys go in as one WriteBatch,
        # one write-ahead-log record instead of one per key (2.6 against 4.9 us per key)
        self.batched = self.rocks and getattr(store, "use_rocksdict", False)

    def reader(self, partition: int) -> Callable[[bytes], bytes | None]:
        if self.rocks:
            return self.store._db_for_partition(partition).get  # type: ignore[no-any-return]
        store = self.store

        def get(key: bytes) -> bytes | None:
            with partition_context(partition):
                return store.get(key)  # type: ignore[no-any-return]
        return get

    def write(self, partition: int, items: list[tuple[bytes, bytes]]) -> None:
        if self.rocks:
            db = self.store._db_for_partition(partition)
            index = self.store._key_index
            # the store opens its DBs in raw mode, so the batch must be raw too
            target = WriteBatch(raw_mode=True) if self.batched else db
            for key, value in items:
                index[key] = partition
                target.put(key, value)
            if self.batched:
                db.write(target)
            return
        with partition_context(partition):
            for key, value in items:
                self.store[key] = value

    def apply(self, partition: int, items: list[tuple[bytes, bytes | None]]) -> None:
        """Puts, and deletes where the value is None (what the changelog already holds)."""
        puts = [(k, v) for k, v in items if v is not None]
        if puts:
            self.write(partition, puts)
        for key, value in items:
            if value is None:
                if self.rocks:
                    self.store._db_for_partition(partition).delete(key)
                else:
                    self.store.data.pop(key, None)

    def mark_persisted(self, changelog: str, saved: dict[tuple[str, int], int]) -> None:
        """Record the changelog offsets just acked, so recovery starts after them."""
        for (topic, p), offset in saved.items():
            if topic == changelog:
                self.store.set_persisted_offset(TP(changelog, p), offset)


@dataclass
class _Pending:
    """One valid, non-duplicate event waiting for its decision."""

    event: Event
    recv: float
    ctx: PredictionContext


@dataclass
class _Flight:
    """A batch whose records are sent but not yet acknowledged by the broker."""

    batch: list[tuple[Message, float]]
    stats: BatchStats
    sent: Sent  # BatchPublisher.send_all(): the delivery futures of its records
    states: dict[int, list[tuple[bytes, bytes]]]  # partition -> (user key, state) to store
    acked: asyncio.Future[Any] | None = None  # all of `sent` settled (created on demand)

    def settled(self) -> asyncio.Future[Any]:
        if self.acked is None:
            self.acked = asyncio.gather(*(f for _, _, f in self.sent), return_exceptions=True)
        return self.acked


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

    @classmethod
    def from_bytes(cls, raw: bytes) -> LastDecision:
        return cls(*orjson.loads(raw))


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


class PredictorHolder:
    """The predictor in service; a new one is swapped in between batches, never within."""

    def __init__(self, predictor: Predictor) -> None:
        self.current = predictor
        self._next: Predictor | None = None

    def offer(self, predictor: Predictor) -> None:
        replaced, self._next = self._next, predictor
        if replaced is not None and replaced is not predictor:
            _close_later(replaced)  # superseded before it ever served

    def swap_if_offered(self) -> bool:
        """Called between batches only, so the old predictor has nothing in flight."""
        if self._next is None:
            return False
        old, self.current, self._next = self.current, self._next, None
        if old is not self.current:
            _close_later(old)
        return True


def _close_later(predictor: Predictor) -> None:
    """Release a retired predictor's resources (its batcher thread) off the event loop."""
    close = getattr(predictor, "close", None)
    if callable(close):
        threading.Thread(target=close, name="close-predictor", daemon=True).start()


class IngestAgent(Service):
    """Reads `events` in micro-batches from the fast path (stream.kafka.fastpath) and decides.

    Per batch: decode + validate each record at the edge (bad ones go to the DLQ with their
    bytes), fold events into each user's state (one table read and write per user per
    batch), call the predictor once in a worker thread, publish decisions without awaiting
    each send, wait for the batch's sends to be acknowledged, and only then ack the input
    records so Faust commits their offsets. A crash at any point re-delivers the uncommitted
    records; their event ids are already in the user's state, so counts stay exact.
    """

    def __init__(self, *, app: Any, settings: Settings, topics: Topics, table: Any,
                 features: FeatureConfig, metrics: Metrics, events_topic: Any,
                 predictor: Predictor | None = None, **kwargs: Any) -> None:
        self.app = app
        self.settings = settings
        self.topics = topics
        self.table = table
        self.features = features
        self.metrics = metrics
        self.events_topic = events_topic
        self.holder = PredictorHolder(predictor or BaselinePredictor())
        self.sink = BatchSink(maxsize=max(4 * settings.batch_max, 2000), on_drop=self._untrack,
                              flow_active=app.flow_control.is_active)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="predict")
        self._batch_lock = asyncio.Lock()
        self._closing = False
        self.recent: list[dict[str, Any]] = []  # latest decisions, for the dashboard
        # also for the dashboard (stream.worker.web): latest latencies as (monotonic s, ms), the
        # remembered decisions per user (bounded LRU), and per user the latest event with its
        # prediction as one orjson blob (see last_decision) in two generations of plain dicts,
        # so the per-event cost is one small dumps and one dict store, memory stays bounded,
        # and nothing here is a container the garbage collector must scan (keeping the
        # Prediction objects alive cost more in GC passes than the rest of the decision)
        self.e2e_recent: deque[tuple[float, float]] = deque(maxlen=20_000)
        self.inference_recent: deque[tuple[float, float]] = deque(maxlen=2_000)
        self.recent_by_user: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self.last_prediction: dict[str, bytes] = {}
        self._last_prediction_old: dict[str, bytes] = {}
        self.stats = BatchStats()
        self.started_at = time.time()
        self._sweep_cursor = 0
        self._out: BatchPublisher | None = None
        self._flight: _Flight | None = None  # sent, not yet acknowledged (see _run)
        # partition -> user key -> state bytes of batches sent but not yet stored
        self._overlay: dict[int, dict[bytes, bytes]] = {}
        self._last_sweep = time.monotonic()
        super().__init__(**kwargs)
        app.add_dependency(self)
        # the topic must be subscribed by Faust's conductor although no stream iterates it
        app.topics.add(events_topic)
        app.topics._acking_topics.add(events_topic.get_topic_name())

    def _untrack(self, messages: list[Message]) -> None:
        """Dropped before processing: Faust must not wait for their acks (nor commit them)."""
        unacked = self.app.consumer._unacked_messages
        for m in messages:
            unacked.discard(m)

    async def on_start(self) -> None:
        register_sink(self.app.consumer, self.events_topic.get_topic_name(), self.sink)
        self.app.flow_control.manage_queue(self.sink)
        self.metrics.set_model(self.holder.current.name, self.holder.current.version)

    async def on_stop(self) -> None:
        self._closing = True
        async with self._batch_lock:  # finish the batch being prepared, then the one sent
            try:
                await self._complete_pending()
            except Exception:  # re-delivered after the stop: its inputs were never acked
                log.exception("could not complete the batch in flight at shutdown")
        # what is still buffered was never acked: forget it so Faust's shutdown does not
        # wait for it; it is re-delivered to whoever owns the partition next
        self.sink.drop_all()
        self._pool.shutdown(wait=True)

    @Service.task
    async def _run(self) -> None:
        """Batches are pipelined one deep: batch N+1 is decoded, folded, predicted and sent
        while the broker acknowledges batch N, which is then completed (states stored, inputs
        acked) before N+1 is. N+1 reads the states N left (the overlay) until N stores them.
        With no next batch waiting, N completes as soon as its acks arrive."""
        settings = self.settings
        within = settings.batch_within_ms / 1000
        getter: asyncio.Task[list[tuple[Message, float]]] | None = None
        try:
            while not self.should_stop and not self._closing:
                if getter is None:
                    getter = asyncio.ensure_future(self.sink.get_batch(settings.batch_max,
                                                                       within))
                flight = self._flight
                if flight is not None and not getter.done():
                    await asyncio.wait((getter, flight.settled()),
                                       return_when=asyncio.FIRST_COMPLETED)
                    if not getter.done():  # acks first, nothing new yet: complete it now
                        async with self._batch_lock:
                            await self._complete_pending()
                        continue
                batch = await getter
                getter = None
                if self._closing:
                    break  # not processed nor acked: re-delivered after the stop
                async with self._batch_lock:
                    await self._pipelined(batch)
                    if time.monotonic() - self._last_sweep > 60:
                        await self._complete_pending()  # the sweep reads the stored states
                        await self.sweep_expired()
        finally:
            if getter is not None:
                getter.cancel()

    async def _pipelined(self, batch: list[tuple[Message, float]]) -> None:
        """Prepare `batch`, then complete the batch before it; broker trouble -> _recover."""
        prev, self._flight = self._flight, None
        try:
            flight = await self.prepare(batch)
        except InfraError as exc:
            await self._recover([prev] if prev is not None else [], [batch], exc)
            return
        if prev is not None:
            try:
                await self.complete(prev)
            except InfraError as exc:
                await self._recover([prev, flight], [], exc)
                return
        self._flight = flight

    async def _complete_pending(self) -> None:
        prev, self._flight = self._flight, None
        if prev is not None:
            try:
                await self.complete(prev)
            except InfraError as exc:
                await self._recover([prev], [], exc)

    async def _recover(self, flights: list[_Flight], batches: list[list[tuple[Message, float]]],
                       exc: InfraError) -> None:
        """Broker trouble with batches in flight: wait until every send of theirs settled,
        forget what they collected and left in the overlay, then process them all again in
        their order, one at a time. Nothing of theirs was stored or acked, so the state stays
        exact; their records that did reach the broker are sent again (at least once), and a
        later batch is never redone before an earlier one (the changelog keeps its order)."""
        log.warning("batch failed (%s); processing the %d batch(es) in flight again", exc,
                    len(flights) + len(batches))
        for f in flights:
            await f.settled()
        self._publisher().discard()
        self._overlay.clear()
        for b in [f.batch for f in flights] + batches:
            await self._process_with_retry(b)

    async def _process_with_retry(self, batch: list[tuple[Message, float]]) -> None:
        delay = 0.2
        for attempt in range(6):
            try:
                await self.process(batch)
                return
            except InfraError as exc:
                self._publisher().discard()  # nothing of the failed attempt is sent later
                self._overlay.clear()  # nor read by the next attempt
                log.warning("batch failed (%s), retry %d in %.1fs", exc, attempt + 1, delay)
                await asyncio.sleep(delay)
                delay *= 2
        raise InfraError("giving up on a batch after 6 attempts; crashing the worker")

    # ---------------------------------------------------------------------------------
    async def process(self, batch: list[tuple[Message, float]]) -> BatchStats:
        """One batch start to end: prepared, sent, acknowledged, stored, acked."""
        flight = await self.prepare(batch)
        await self.complete(flight)
        return flight.stats

    async def prepare(self, batch: list[tuple[Message, float]]) -> _Flight:
        """Steps 1-5 of a batch, its records handed to the producer without waiting."""
        if self.stats.first_batch_at is None:
            self.stats.first_batch_at = time.time()
        cfg = self.features
        now_ms = int(time.time() * 1000)
        settings = self.settings
        out = self._publisher()
        stats = BatchStats(events=len(batch))
        unacked = self.app.consumer._unacked_messages
        for m, _ in batch:
            unacked.add(m)

        # 1. decode at the edge; group valid events by partition, then user, in order
        by_part: dict[int, dict[str, list[tuple[Event, float]]]] = {}
        dlq_topic = self.topics.dlq.name
        for m, recv in batch:
            try:
                ev = decode_event(m.value, m.key, settings.max_event_bytes)
            except PoisonMessage as bad:
                stats.dlq += 1
                self.metrics.dlq.labels(error_kind=bad.kind).inc()
                await out.add(dlq_topic, m.key, self._dlq_record(m, bad, now_ms))
                continue
            users = by_part.get(m.partition)
            if users is None:
                users = by_part[m.partition] = {}
            evs = users.get(ev.user_id)
            if evs is None:
                users[ev.user_id] = [(ev, recv)]
            else:
                evs.append((ev, recv))

        # 2. fold into state: one read and one write per user, each partition in its context
        pending: list[_Pending] = []
        recommend_on = settings.recommend_on
        top_k = settings.top_k
        store = self.table.data
        changelog = self.table.changelog_topic.get_topic_name()
        n_windows = len(cfg.windows_s)
        states: list[tuple[int, bytes, UserState]] = []
        table = TableAccess(store)
        overlay = self._overlay
        for partition, users in by_part.items():
            get = table.reader(partition)
            newer = overlay.get(partition)
            if newer is not None:  # states of the batch in flight, not stored yet
                stored = get

                def get(key: bytes, newer: dict[bytes, bytes] = newer,
                        stored: Callable[[bytes], bytes | None] = stored) -> bytes | None:
                    raw = newer.get(key)
                    return raw if raw is not None else stored(key)
            with partition_context(partition):
                for user_id, events in users.items():
                    key = user_id.encode()
                    raw = get(key)
                    st = (UserState.from_bytes(raw, n_windows) if raw
                          else UserState(user_id, n_windows))
                    for ev, recv in events:
                        res = st.apply(ev, cfg, now_ms)
                        if res.duplicate:
                            stats.duplicates += 1
                            continue
                        if res.late:
                            stats.late += 1
                        pending.append(_Pending(ev, recv, PredictionContext(
                            user_id, ev.event_id, ev.item_id, ev.type, ev.ts, ev.category,
                            st.sequence(), st.numeric_features(cfg, ev),
                            ev.type in recommend_on, top_k)))
                    states.append((partition, key, st))

        # 3. one model call for the whole batch, off the event loop
        predictions: list[Prediction] = []
        if pending:
            if self.holder.swap_if_offered():
                cur = self.holder.current
                self.metrics.set_model(cur.name, cur.version)
            t0 = time.perf_counter()
            loop = asyncio.get_running_loop()
            predictions = await loop.run_in_executor(
                self._pool, self._predict, [p.ctx for p in pending])
            dt = time.perf_counter() - t0
            self.metrics.inference.observe(dt)
            self.inference_recent.append((time.monotonic(), dt * 1000))

        # 4. state: changelog records now (same partition as the source); the local store
        # is written only once the broker has everything (step 6), so a batch that fails to
        # publish leaves no trace and its retry decides again instead of seeing duplicates
        by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
        for partition, key, st in states:
            value = st.to_bytes()
            by_partition.setdefault(partition, []).append((key, value))
            part_overlay = overlay.get(partition)
            if part_overlay is None:
                part_overlay = overlay[partition] = {}
            part_overlay[key] = value
            await out.add(changelog, key, value, partition)

        # 5. decisions
        threshold = settings.risk_threshold
        rec_topic = self.topics.recommendations.name
        decisions_topic = self.topics.decisions.name if settings.decision_log else None
        alert_topic = self.topics.risk_alerts.name
        dumps = orjson.dumps
        latest = self.last_prediction
        for p, pred in zip(pending, predictions, strict=True):
            ev = p.event
            key = ev.user_id.encode()
            risk = pred.risk
            latest[ev.user_id] = dumps((
                ev.event_id, ev.type, ev.ts, pred.model, pred.model_version,
                pred.risk_model_version, risk.score, list(map(tuple, risk.reasons)),
                list(map(tuple, pred.items))))
            if p.ctx.recommend:  # cold start: may be empty until the model knows items
                lat = (time.monotonic() - p.recv) * 1000
                rec = {
                    "rec_id": f"rec:{ev.event_id}", "user_id": ev.user_id,
                    "event_id": ev.event_id,
                    "items": [{"item_id": i.item_id, "score": i.score,
                               "propensity": i.propensity} for i in pred.items],
                    "model": pred.model, "model_version": pred.model_version,
                    "ts": int(time.time() * 1000), "event_ts": ev.ts,
                    "latency_ms": round(lat, 3),
                    "explored": pred.trace is not None and pred.trace.explored,
                }
                await out.add(rec_topic, key, dumps(rec))
                if decisions_topic is not None:  # issue #5: the feedback join's input
                    await out.add(decisions_topic, key, decision_record(rec, p.ctx, pred,
                                                                          threshold))
                stats.recommendations += 1
                stats.latencies_ms.append(lat)
                if stats.recommendations % 50 == 1:
                    self._remember("recommendation", rec)
            if pred.risk.score >= threshold:
                lat = (time.monotonic() - p.recv) * 1000
                alert = {
                    "alert_id": f"alert:{ev.event_id}", "user_id": ev.user_id,
                    "event_id": ev.event_id, "score": pred.risk.score,
                    "threshold": threshold,
                    "reasons": [{"feature": r.feature, "value": r.value,
                                 "contribution": r.contribution} for r in pred.risk.reasons],
                    "model_version": pred.risk_model_version,
                    "ts": int(time.time() * 1000), "event_ts": ev.ts,
                    "latency_ms": round(lat, 3),
                    # the snapshot the risk model scored: events that trigger no
                    # recommendation have no decision record, and the risk-label join needs
                    # one for every alerted event (alerts are rare: this costs little)
                    "features": p.ctx.features, "sequence": list(map(tuple, p.ctx.sequence)),
                }
                await out.add(alert_topic, key, dumps(alert))
                stats.alerts += 1
                self._remember("risk_alert", alert)
        if len(latest) > 5000:
            self._last_prediction_old, self.last_prediction = latest, {}

        try:
            sent = await out.send_all()
        except InfraError:
            raise
        except Exception as exc:  # broker trouble: not the input's fault
            raise InfraError(f"publishing a batch failed: {exc!r}") from exc
        return _Flight(batch, stats, sent, by_partition)

    async def complete(self, flight: _Flight) -> None:
        """6. every record of the batch acknowledged by the broker -> write the local state,
        ack the inputs (so Faust commits them)."""
        try:
            last = await self._publisher().wait(flight.sent)
        except Exception as exc:  # broker trouble: not the input's fault
            raise InfraError(f"publishing a batch failed: {exc!r}") from exc
        store = self.table.data
        table = TableAccess(store)
        overlay = self._overlay
        for partition, items in flight.states.items():
            table.write(partition, items)
            part_overlay = overlay.get(partition)
            if part_overlay is not None:
                for key, value in items:
                    if part_overlay.get(key) is value:  # not overwritten by a later batch
                        del part_overlay[key]
                if not part_overlay:
                    del overlay[partition]
        table.mark_persisted(self.table.changelog_topic.get_topic_name(), last)
        ack = self.app.consumer.ack
        for m, _ in flight.batch:
            ack(m)
        self._account(flight.stats)

    def _publisher(self) -> BatchPublisher:
        if self._out is None:
            self._out = BatchPublisher(self.app.producer._ensure_producer())
        return self._out

    def _predict(self, contexts: Sequence[PredictionContext]) -> list[Prediction]:
        predictor = self.holder.current
        out = predictor.predict_batch(contexts)
        predictor.learn_batch(contexts)
        return out

    def _dlq_record(self, m: Message, bad: PoisonMessage, now_ms: int) -> bytes:
        return dlq_record(bad, m.value, m.key, m.topic, m.partition, m.offset, now_ms)

    def _remember(self, kind: str, record: dict[str, Any]) -> None:
        entry = {"kind": kind, **record}
        self.recent.append(entry)
        if len(self.recent) > 200:
            del self.recent[:100]
        mine = self.recent_by_user.pop(record["user_id"], [])
        mine.append(entry)
        self.recent_by_user[record["user_id"]] = mine[-5:]
        if len(self.recent_by_user) > 2000:
            self.recent_by_user.popitem(last=False)

    def last_decision(self, user_id: str) -> LastDecision | None:
        """The user's latest event and what was decided for it, if still kept."""
        raw = self.last_prediction.get(user_id) or self._last_prediction_old.get(user_id)
        return LastDecision.from_bytes(raw) if raw else None

    def newest_decision(self) -> LastDecision | None:
        for gen in (self.last_prediction, self._last_prediction_old):
            if gen:
                return LastDecision.from_bytes(next(reversed(gen.values())))
        return None

    def _account(self, s: BatchStats) -> None:
        m = self.metrics
        topic = self.topics.events.name
        m.events_in.labels(topic=topic).inc(s.events)
        m.batch_size.observe(s.events)
        if s.duplicates:
            m.duplicates.inc(s.duplicates)
        if s.late:
            m.late.inc(s.late)
        if s.recommendations:
            m.events_out.labels(topic=self.topics.recommendations.name).inc(s.recommendations)
        if s.alerts:
            m.events_out.labels(topic=self.topics.risk_alerts.name).inc(s.alerts)
            m.risk_alerts.inc(s.alerts)
        if s.dlq:
            m.events_out.labels(topic=self.topics.dlq.name).inc(s.dlq)
        for lat in s.latencies_ms:
            m.e2e.observe(lat / 1000)
        now = time.monotonic()
        self.e2e_recent.extend((now, lat) for lat in s.latencies_ms)
        t = self.stats
        t.events += s.events
        t.dlq += s.dlq
        t.duplicates += s.duplicates
        t.late += s.late
        t.recommendations += s.recommendations
        t.alerts += s.alerts
        t.last_batch_at = time.time()

    # ---------------------------------------------------------------------------------
    def read_state(self, user_id: str) -> UserState | None:
        """The user's state if this worker owns it now (used by the web view).

        RocksDB keeps the files of partitions this worker no longer owns, so the lookup is
        restricted to the table partitions currently assigned here: a stale copy left behind
        by a rebalance is never served.
        """
        key = user_id.encode()
        store = self.table.data
        raw: bytes | None = None
        if hasattr(store, "_dbs"):
            changelog = self.table.changelog_topic.get_topic_name()
            for tp in self.app.consumer.assignment():
                if tp.topic != changelog:
                    continue
                with partition_context(tp.partition):
                    raw = store.get(key)
                if raw:
                    break
        else:
            raw = store.get(key)
        if not raw:
            return None
        st = UserState.from_bytes(raw, len(self.features.windows_s))
        if st.expired(self.features, int(time.time() * 1000)):
            return None
        return st

    async def sweep_expired(self, budget: int = 20_000) -> int:
        """Delete users idle past the TTL (processing time); a bounded slice per call."""
        self._last_sweep = time.monotonic()
        store = self.table.data
        dbs = getattr(store, "_dbs", None)
        now_ms = int(time.time() * 1000)
        n_windows = len(self.features.windows_s)
        expired: list[tuple[int, bytes]] = []
        if dbs is None:
            return 0  # memory store: expiry happens lazily when a user's next event arrives
        seen = 0
        for partition, db in list(dbs.items()):
            for key, value in db.items():
                if key == store.offset_key:
                    continue
                seen += 1
                try:
                    st = UserState.from_bytes(value, n_windows)
                except ValueError:
                    continue
                if st.expired(self.features, now_ms):
                    expired.append((partition, key))
                if seen >= budget:
                    break
        changelog = self.table.changelog_topic.get_topic_name()
        futures = []
        for partition, key in expired:
            with partition_context(partition):
                del store[key]
            futures.append(await self.app.producer.send(changelog, key, None, partition, None,
                                                        None))
        if futures:
            await asyncio.gather(*futures)
        return len(expired)
