"""Batch delivery from Faust's consumer to lamstream's agents, around Faust's per-message path.

Why: a profile of a Faust worker on this class of machine puts most of the cost of a message
in Faust's delivery path, not in user code: `Consumer._drain_messages` awaits
`wait_first(callback(message), suspend_flow.wait())` for every message (two tasks each), then
the conductor decodes, flow-controls and queues it, and the stream's iterator wakes once per
message. That caps a Faust agent at a few thousand events/s whatever the agent does.

lamstream keeps everything else Faust gives (consumer group, rebalancing, acks and offset
commits, tables with changelogs and recovery, the web server, timers) and changes one thing:
records of the topics registered here skip the per-message callback and are handed over as
lists to a `BatchSink`, which the ingest agent drains in micro-batches. The agent acks each
message after its batch is fully processed, so Faust commits exactly what was processed.
Other topics (e.g. model-updates) go through Faust's normal path, where `wait_first` is only
used while flow is actually suspended (the same semantics, two tasks fewer per message).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from faust.transport.consumer import Consumer
from faust.types import TP, Message
from mode import Service

_SINKS_ATTR = "_lamstream_sinks"


class BatchSink:
    """A bounded hand-over buffer of (message, receipt time) between consumer and agent.

    It is registered with Faust's flow control, which calls `clear()` in two places: when a
    rebalance revokes partitions (flow suspended: whatever is buffered may belong to another
    worker now, so it is dropped), and again when flow resumes after recovery. The second
    call comes *after* Faust has seeked every partition to its committed offset, so records
    fetched in between are already at the right position and must not be dropped: the
    consumer has moved past them and would never fetch them again (a moved partition then
    silently stopped at its first post-recovery fetch). So `clear()` only drops while flow
    is suspended; `drop_all()` drops unconditionally (worker shutdown).
    """

    def __init__(self, maxsize: int = 50_000,
                 on_drop: Callable[[list[Message]], None] | None = None,
                 flow_active: Callable[[], bool] | None = None) -> None:
        self.maxsize = maxsize
        self.on_drop = on_drop
        self.flow_active = flow_active
        self.epoch = 0
        self._buf: collections.deque[tuple[Message, float]] = collections.deque()
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()

    def __len__(self) -> int:
        return len(self._buf)

    async def put_many(self, messages: list[Message], epoch: int | None = None) -> None:
        """Called by the consumer's drain loop; waits while the buffer is full (backpressure).

        `epoch` is the sink's epoch when the messages were fetched: if a rebalance cleared
        the buffer since, they are dropped, not delivered (their partitions may belong to
        another worker now; the ones still ours are fetched again from the committed offset).
        """
        if epoch is None:
            epoch = self.epoch
        while len(self._buf) >= self.maxsize:
            self._not_full.clear()
            await self._not_full.wait()
        if epoch != self.epoch:
            if self.on_drop is not None:
                self.on_drop(messages)
            return
        now = time.monotonic()
        self._buf.extend((m, now) for m in messages)
        self._not_empty.set()

    async def get_batch(self, max_n: int, within_s: float) -> list[tuple[Message, float]]:
        """Wait for at least one message, then up to within_s for max_n; never more."""
        while not self._buf:
            self._not_empty.clear()
            await self._not_empty.wait()
        if len(self._buf) < max_n and within_s > 0:
            deadline = time.monotonic() + within_s
            while len(self._buf) < max_n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._not_empty.clear()
                try:
                    await asyncio.wait_for(self._not_empty.wait(), left)
                except TimeoutError:
                    break
        n = min(max_n, len(self._buf))
        buf = self._buf
        out = [buf.popleft() for _ in range(n)]
        if len(buf) < self.maxsize:
            self._not_full.set()
        return out

    def clear(self) -> None:
        """Faust's flow control: drop everything buffered, unless flow is running (resume)."""
        if self.flow_active is not None and self.flow_active():
            return
        self.drop_all()

    def drop_all(self) -> None:
        """Drop everything buffered and whatever is still on its way in."""
        self.epoch += 1
        dropped = [m for m, _ in self._buf]
        self._buf.clear()
        self._not_full.set()
        if self.on_drop is not None and dropped:
            self.on_drop(dropped)

    def drop(self, tps: Iterable[TP]) -> int:
        """Forget buffered messages of revoked partitions (they were never acked)."""
        gone = set(tps)
        keep = [(m, t) for m, t in self._buf if m.tp not in gone]
        dropped = len(self._buf) - len(keep)
        self._buf = collections.deque(keep)
        if len(self._buf) < self.maxsize:
            self._not_full.set()
        return dropped


def register_sink(consumer: Consumer, topic: str, sink: BatchSink) -> None:
    sinks: dict[str, BatchSink] | None = getattr(consumer, _SINKS_ATTR, None)
    if sinks is None:
        sinks = {}
        setattr(consumer, _SINKS_ATTR, sinks)
    sinks[topic] = sink


async def fetch(consumer: Consumer, timeout: float) -> list[tuple[TP, Message]]:
    """Faust's Consumer.getmany, except that records it cannot deliver are fetched again.

    getmany drops the rest of a fetch when flow stops, the generation changes or a partition
    is paused while it iterates; the consumer's position has already moved past those
    records and Faust's seek to the committed offsets does not bring them back for a
    partition that has no committed offset yet. A partition taken over from a worker that
    died before its first commit then skipped everything up to its next fetch. Here such a
    partition is seeked back to the first record not delivered.
    """
    c: Any = consumer
    app = c.app
    generation = app.consumer_generation_id
    records, active = await c._wait_next_records(timeout)
    if records is None or c.should_stop:
        return []
    deliver = c.flow_active and app.consumer_generation_id == generation
    buffered = c._buffered_partitions
    to_message = c._to_message
    out: list[tuple[TP, Message]] = []
    rewind: dict[TP, int] = {}
    for tp, recs in records.items():
        if not recs:
            continue
        if deliver and (active is None or tp in active or tp in buffered):
            app.monitor.track_tp_end_offset(tp, c.highwater(tp))
            out.extend([(tp, to_message(tp, r)) for r in recs])
        else:
            rewind[tp] = recs[0].offset
    if rewind:
        assigned = c.assignment()
        for tp, offset in rewind.items():
            if tp in assigned:
                try:
                    await c.seek(tp, offset)
                except Exception as exc:  # moved away meanwhile: its next owner reads from
                    # the committed offset, so nothing is lost by not seeking here
                    logging.getLogger(__name__).warning(
                        "could not seek %s back to %d: %r", tp, offset, exc)
    return out


async def _drain_messages(self: Consumer, fetcher: Service) -> None:  # pragma: no cover
    """Faust's Consumer._drain_messages with batch hand-over for registered topics."""
    callback = self.callback
    consumer_should_stop = cast(Service, self)._stopped.is_set
    fetcher_should_stop = fetcher._stopped.is_set
    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    acks_enabled_for = self.app.topics.acks_enabled_for
    suspend_flow = self.suspend_flow
    commit_every = self._commit_every
    flow_control = self.app.flow_control
    sleep = asyncio.sleep
    yield_every = 100
    num_since_yield = 0
    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            sinks: dict[str, BatchSink] = getattr(self, _SINKS_ATTR, {})
            epochs = {topic: sink.epoch for topic, sink in sinks.items()}  # at fetch time
            fetched = await fetch(self, 1.0)
            await self.sleep(0)
            if self.should_stop:
                continue
            pending: dict[str, list[Message]] = {}
            for tp, message in fetched:
                offset = message.offset
                r_offset = get_read_offset(tp)
                if r_offset is not None and offset < r_offset:
                    continue  # already delivered (seek back after rebalance)
                gap = offset - (r_offset or 0)
                if gap > 1 and r_offset and acks_enabled_for(message.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                sink_list = pending.get(message.topic)
                if sink_list is not None or message.topic in sinks:
                    if sink_list is None:
                        sink_list = pending[message.topic] = []
                    sink_list.append(message)
                    set_read_offset(tp, offset)
                    continue
                num_since_yield += 1
                if num_since_yield > yield_every:
                    await sleep(0)
                    num_since_yield = 0
                if commit_every is not None and self._n_acked >= commit_every:
                    self._n_acked = 0
                    await self.commit()
                if suspend_flow.is_set():
                    await self.wait_first(callback(message), suspend_flow.wait())
                else:
                    await callback(message)
                set_read_offset(tp, offset)
            for topic, messages in pending.items():
                # hold them while flow is suspended (rebalance, recovery), like Faust's own
                # delivery path does; a rebalance in the meantime makes put_many drop them
                await flow_control.acquire()
                await sinks[topic].put_many(messages, epochs[topic])
    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise


def install() -> None:
    """Patch Faust's consumer drain loop (idempotent; behaviour unchanged for other topics)."""
    if getattr(Consumer, "_lamstream_patched", False):
        return
    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign,assignment]
    Consumer._lamstream_patched = True  # type: ignore[attr-defined]
