"""The ingest agent: validate events, update per-user features, predict, publish decisions."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from faust.types import Message
from mode import Service

from model.predictor import Predictor, keeps_seq_state
from model.recommenders.baseline import BaselinePredictor
from model.types import Prediction, PredictionContext
from stream.errors import InfraError
from stream.kafka.fastpath import BatchSink
from stream.kafka.faust_patches import register_sink, subscribe_without_stream, unacked_messages
from stream.kafka.publish import BatchPublisher, LazyPublisher, Sent
from stream.settings import Settings
from stream.state.features import FeatureConfig, UserState
from stream.state.table import SweepCursor, TableAccess
from stream.topics import Topics
from stream.worker import steps
from stream.worker.faults import FaultPoint
from stream.worker.holder import PredictorHolder
from stream.worker.metrics import Metrics
from stream.worker.recent import RecentDecisions
from stream.worker.steps import Batch, BatchStats, Outputs, Pending

log = logging.getLogger(__name__)


@dataclass
class _Flight:
    """A batch whose records are sent but not yet acknowledged by the broker."""

    batch: Batch
    stats: BatchStats
    sent: Sent  # BatchPublisher.send_all(): the delivery futures of its output records
    states: dict[int, list[tuple[bytes, bytes]]]  # partition -> (user key, state) to store
    changelog: Sent | None = None  # the delivery futures of its changelog records, once sent
    acked: asyncio.Future[Any] | None = None  # all of `sent` settled (created on demand)

    def settled(self) -> asyncio.Future[Any]:
        if self.acked is None:
            self.acked = asyncio.gather(*(f for _, _, f in self.sent), return_exceptions=True)
        return self.acked

    def changelog_settled(self) -> asyncio.Future[Any]:
        return asyncio.gather(*(f for _, _, f in self.changelog or ()), return_exceptions=True)

    def outputs_durable(self) -> bool:
        """Every output record acknowledged without error (no waiting)."""
        return all(f.done() and not f.cancelled() and f.exception() is None
                   for _, _, f in self.sent)


class IngestAgent(Service):
    """Reads `events` in micro-batches from the fast path (stream.kafka.fastpath) and decides.

    Per batch: decode + validate each record at the edge (bad ones go to the DLQ with their
    bytes), fold events into each user's state (one table read and write per user per
    batch), call the predictor once in a worker thread, publish decisions without awaiting
    each send, wait for them to be acknowledged, then send the states' changelog records and
    wait for those, and only then ack the input records so Faust commits their offsets. A
    crash at any point re-delivers the uncommitted records: those whose state reached the
    changelog are found there as duplicates (counts stay exact) and had their outputs acked
    before it; the others are decided again (outputs at least once, same ids).
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
        self.recent = RecentDecisions()  # for the dashboard (stream.worker.web)
        self.stats = BatchStats()
        self.started_at = time.time()
        self._outputs = Outputs(
            recommendations=topics.recommendations.name, risk_alerts=topics.risk_alerts.name,
            decisions=topics.decisions.name if settings.decision_log else None,
            dlq=topics.dlq.name, risk_threshold=settings.risk_threshold)
        self._publisher = LazyPublisher(app)
        self._fault = FaultPoint.from_env()  # tests only (stream.worker.faults)
        self._flight: _Flight | None = None  # sent, not yet acknowledged (see _run)
        # partition -> user key -> state bytes of batches sent but not yet stored
        self._overlay: dict[int, dict[bytes, bytes]] = {}
        self._last_sweep = time.monotonic()
        self._sweep_cursor = SweepCursor()
        super().__init__(**kwargs)
        app.add_dependency(self)
        subscribe_without_stream(app, events_topic)

    def _untrack(self, messages: list[Message]) -> None:
        """Dropped before processing: Faust must not wait for their acks (nor commit them)."""
        unacked = unacked_messages(self.app)
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
        getter: asyncio.Task[Batch] | None = None
        try:
            while not self.should_stop and not self._closing:
                if getter is None:
                    getter = asyncio.ensure_future(self.sink.get_batch(settings.batch_max,
                                                                       within))
                flight = self._flight
                if flight is not None and not getter.done() and await self._advance(flight,
                                                                                    getter):
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

    async def _advance(self, flight: _Flight, getter: asyncio.Task[Batch]) -> bool:
        """No next batch yet: move the batch in flight on as its acks arrive, outputs acked
        -> send its changelog, changelog acked -> complete it. False when the next batch came
        first (it takes the changelog along, see prepare)."""
        waiting = flight.settled() if flight.changelog is None else flight.changelog_settled()
        await asyncio.wait((getter, waiting), return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return False
        async with self._batch_lock:
            if self._flight is not flight:
                return True
            if flight.changelog is None and flight.outputs_durable():
                try:
                    flight.changelog = await self._send_changelog(flight)
                except InfraError as exc:
                    self._flight = None
                    await self._recover([flight], [], exc)
            else:  # changelog acked, or an output failed (complete raises, we recover)
                await self._complete_pending()
        return True

    async def _pipelined(self, batch: Batch) -> None:
        """Prepare `batch`, then complete the batch before it; broker trouble -> _recover."""
        prev, self._flight = self._flight, None
        try:
            flight = await self.prepare(batch, prev)
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

    async def _recover(self, flights: list[_Flight], batches: list[Batch],
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
            if f.changelog:  # the old records land before the retry's (the changelog's order)
                await asyncio.gather(*(fut for _, _, fut in f.changelog), return_exceptions=True)
        self._publisher().discard()
        self._overlay.clear()
        for b in [f.batch for f in flights] + batches:
            await self._process_with_retry(b)

    async def _process_with_retry(self, batch: Batch) -> None:
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
    async def process(self, batch: Batch) -> BatchStats:
        """One batch start to end: prepared, sent, acknowledged, stored, acked."""
        flight = await self.prepare(batch)
        await self.complete(flight)
        return flight.stats

    async def prepare(self, batch: Batch, prev: _Flight | None = None) -> _Flight:
        """Steps 1-5 of a batch (stream.worker.steps), its outputs handed to the producer
        without waiting; with them the changelog of `prev` (the batch before) when its
        outputs are already acknowledged, which saves complete() a round trip."""
        stats = self._take(batch)
        settings = self.settings
        now_ms = int(time.time() * 1000)
        out = self._publisher()
        if self._fault is not None:
            out.after_send = self._fault_after_send
        by_part = await steps.decode(batch, settings.max_event_bytes, out, self._outputs.dlq,
                                     stats, self.metrics.dlq, now_ms)
        table, overlay = TableAccess(self.table.data), self._overlay
        # the predictor that serves this batch (an offered one swaps in before the model call,
        # with no await between): whether it keeps per-user sequence states
        keep_seq = keeps_seq_state(self.holder.pending or self.holder.current)
        pending, states = steps.fold(
            by_part, lambda partition: steps.reader(table, overlay, partition), self.features,
            settings.recommend_on, settings.top_k, now_ms, stats, keep_seq)
        predictions = await self._predict_pending(pending)  # 3. one model call
        if keep_seq:
            steps.keep_seq_states(pending, predictions, states)
        by_partition = steps.stage_states(states, overlay)
        await steps.decide(pending, predictions, out, self._outputs, stats, self.recent)
        changelog = self.table.changelog_topic.get_topic_name()
        early = (prev if prev is not None and prev.changelog is None and prev.outputs_durable()
                 else None)
        if early is not None:
            await steps.add_changelog(early.states, out, changelog)
        sent = await self._send_all(out)
        if early is not None:
            early.changelog = [s for s in sent if s[0][0] == changelog]
            sent = [s for s in sent if s[0][0] != changelog]
        return _Flight(batch, stats, sent, by_partition)

    async def _send_changelog(self, flight: _Flight) -> Sent:
        """The changelog records of `flight`, whose outputs are acknowledged, handed to the
        producer (nothing else is collected between batches)."""
        out = self._publisher()
        await steps.add_changelog(flight.states, out, self.table.changelog_topic.get_topic_name())
        return await self._send_all(out)

    @staticmethod
    async def _send_all(out: BatchPublisher) -> Sent:
        try:
            return await out.send_all()
        except InfraError:
            raise
        except Exception as exc:  # broker trouble: not the input's fault
            raise InfraError(f"publishing a batch failed: {exc!r}") from exc

    def _take(self, batch: Batch) -> BatchStats:
        """A batch starts: Faust must not commit past its messages until they are acked."""
        if self.stats.first_batch_at is None:
            self.stats.first_batch_at = time.time()
        unacked = unacked_messages(self.app)
        for m, _ in batch:
            unacked.add(m)
        return BatchStats(events=len(batch))

    async def _predict_pending(self, pending: list[Pending]) -> list[Prediction]:
        """3. One model call for the whole batch, off the event loop; a predictor offered
        since the last batch serves from this one."""
        if not pending:
            return []
        if self.holder.swap_if_offered():
            cur = self.holder.current
            self.metrics.set_model(cur.name, cur.version)
        t0 = time.perf_counter()
        loop = asyncio.get_running_loop()
        predictions = await loop.run_in_executor(
            self._pool, self._predict, [p.ctx for p in pending])
        dt = time.perf_counter() - t0
        self.metrics.inference.observe(dt)
        self.recent.inference.append((time.monotonic(), dt * 1000))
        return predictions

    async def complete(self, flight: _Flight) -> None:
        """6. every output record of the batch acknowledged by the broker -> its changelog
        records sent (unless the next batch took them along) and acknowledged -> write the
        local state, ack the inputs (so Faust commits them)."""
        out = self._publisher()
        try:
            await out.wait(flight.sent)
            if flight.changelog is None:
                flight.changelog = await self._send_changelog(flight)
            last = await out.wait(flight.changelog)
        except InfraError:
            raise
        except Exception as exc:  # broker trouble: not the input's fault
            raise InfraError(f"publishing a batch failed: {exc!r}") from exc
        table = TableAccess(self.table.data)
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
        if self._fault is not None and self._fault.reached("ack"):
            self._fault.die()
        ack = self.app.consumer.ack
        for m, _ in flight.batch:
            ack(m)
        self._account(flight.stats)

    async def _fault_after_send(self, topic: str, ack: asyncio.Future[Any]) -> None:
        """Tests only: die once the planned step's record batch is acknowledged."""
        fault, to = self._fault, self._outputs
        step = ("changelog" if topic == self.table.changelog_topic.get_topic_name() else
                "outputs" if topic in (to.recommendations, to.decisions, to.risk_alerts) else "")
        if fault is not None and fault.reached(step):
            await ack
            fault.die()

    def _predict(self, contexts: Sequence[PredictionContext]) -> list[Prediction]:
        predictor = self.holder.current
        out = predictor.predict_batch(contexts)
        predictor.learn_batch(contexts)
        return out

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
        self.recent.e2e.extend((now, lat) for lat in s.latencies_ms)
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
        """The user's state if this worker owns it now (used by the web view): only the table
        partitions assigned here now are read, never a stale copy a rebalance left behind."""
        changelog = self.table.changelog_topic.get_topic_name()
        owned = [tp.partition for tp in self.app.consumer.assignment() if tp.topic == changelog]
        raw = TableAccess(self.table.data).read_owned(user_id.encode(), owned)
        if not raw:
            return None
        st = UserState.from_bytes(raw, len(self.features.windows_s))
        if st.expired(self.features, int(time.time() * 1000)):
            return None
        return st

    async def sweep_expired(self, budget: int = 20_000) -> int:
        """Delete users idle past the TTL (processing time); a bounded slice per call. The
        memory store has no sweep: a user expires lazily when their next event arrives."""
        self._last_sweep = time.monotonic()
        table = TableAccess(self.table.data)
        now_ms = int(time.time() * 1000)
        n_windows = len(self.features.windows_s)
        expired: list[tuple[int, bytes]] = []
        # resumes where the last call stopped, so successive calls reach every user
        for partition, key, value in self._sweep_cursor.walk(table, budget):
            try:
                st = UserState.from_bytes(value, n_windows)
            except ValueError:  # StateError, or bytes that are no state at all
                continue
            if st.expired(self.features, now_ms):
                expired.append((partition, key))
        changelog = self.table.changelog_topic.get_topic_name()
        futures = []
        for partition, key in expired:
            table.delete(partition, key)
            futures.append(await self.app.producer.send(changelog, key, None, partition, None,
                                                        None))
        if futures:
            await asyncio.gather(*futures)
        return len(expired)
