"""Every touch of a Faust private (and of the aiokafka client Faust builds), in one place.

lamstream keeps what Faust gives (consumer group, rebalancing, acks and commits, tables with
changelogs and recovery, the web server, timers) and reaches past its public API in a few
places, each for a reason measured or observed and said beside it: a batch drain loop for
the events topic (stream.kafka.fastpath says why), direct access to the RocksDB table store,
a changelog highwater fix for tansu, and a configurable fetch wait. Private names change
without notice between releases, so importing this module fails with FaustVersionError unless
the installed versions are the ones every function here was audited against (PINNED, kept
equal to pyproject's pins by a unit test).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from importlib import metadata
from typing import Any, cast

from faust.streams import _current_event
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP, Message
from mode import Service

from stream.errors import FaustVersionError
from stream.kafka.fastpath import BatchSink

log = logging.getLogger(__name__)

# the versions whose internals every function below was read against
PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}


def check_versions() -> None:
    """Refuse to run on a Faust or aiokafka this module was not audited against."""
    for dist, pinned in PINNED.items():
        try:
            installed = metadata.version(dist)
        except metadata.PackageNotFoundError:
            installed = "none"
        if installed != pinned:
            raise FaustVersionError(
                f"{dist} {installed} is installed, but stream/kafka/faust_patches.py was "
                f"audited against {pinned}: re-read each of its functions against the "
                f"{dist} {installed} source (Consumer._drain_messages and getmany, "
                "Recovery._build_highwaters, AIOKafkaConsumerThread._create_worker_consumer, "
                "the RocksDB store's _db_for_partition/_dbs/_key_index, "
                "faust.streams._current_event), then update PINNED and pyproject.toml")


check_versions()


# -- consumer: the batch drain loop (why: stream.kafka.fastpath) ----------------------------
_SINKS_ATTR = "_lamstream_sinks"


def register_sink(consumer: Consumer, topic: str, sink: BatchSink) -> None:
    """Deliver `topic`'s records to `sink` in lists, around Faust's per-message callback."""
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
                    log.warning("could not seek %s back to %d: %r", tp, offset, exc)
    return out


async def _drain_messages(self: Consumer, fetcher: Service) -> None:  # pragma: no cover
    """Faust's Consumer._drain_messages with batch hand-over for registered topics."""
    try:
        await _drain(self, fetcher)
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


async def _drain(self: Consumer, fetcher: Service) -> None:  # pragma: no cover
    """The loop of Faust's drain: records of a registered topic go to its sink as one list
    per fetch; the others take Faust's per-message path."""
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


def install_batch_drain() -> None:
    """Replace Faust's consumer drain loop with the one above (idempotent; other topics keep
    Faust's per-message path, with `wait_first` only while flow is suspended)."""
    if getattr(Consumer, "_lamstream_patched", False):
        return
    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign,assignment]
    Consumer._lamstream_patched = True  # type: ignore[attr-defined]


# -- consumer: acks and positions ---------------------------------------------------------
def subscribe_without_stream(app: Any, topic: Any) -> None:
    """Have Faust's conductor subscribe `topic` and track acks of its records although no
    stream iterates it (the batch sink delivers them)."""
    app.topics.add(topic)
    app.topics._acking_topics.add(topic.get_topic_name())


def unacked_messages(app: Any) -> set[Message]:
    """The consumer's set of delivered, not yet acked messages: those it must not commit past.
    A batch's messages go in when it is taken, out when acked or dropped unprocessed."""
    return app.consumer._unacked_messages  # type: ignore[no-any-return]


def read_offset(consumer: Any, tp: TP) -> int | None:
    """The offset of the last record the consumer delivered from `tp` (None: none yet)."""
    return consumer._read_offset.get(tp)  # type: ignore[no-any-return]


def broker_connected(consumer: Any) -> bool | None:
    """Whether the consumer holds a live broker connection (None: cannot tell)."""
    try:
        conns = list(consumer._thread._consumer._client._conns.values())
    except Exception:  # not started yet, or another transport
        return None
    return any(c.connected() for c in conns)


_FETCH_WAIT_MS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def set_fetch_max_wait(app: Any, wait_ms: int) -> None:
    """Faust builds its aiokafka consumer with fetch_max_wait_ms=1500 hard-coded; use
    `wait_ms` for this app's consumer."""
    _FETCH_WAIT_MS[app] = wait_ms
    cls: Any = AIOKafkaConsumerThread
    if getattr(cls, "_lamstream_fetch_wait", False):
        return
    original = cls._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        ms = _FETCH_WAIT_MS.get(self.app)
        if ms is not None:
            consumer._fetch_max_wait_ms = ms  # read when the consumer starts its fetcher
        return consumer

    cls._create_worker_consumer = create
    cls._lamstream_fetch_wait = True


# -- producer -------------------------------------------------------------------------------
def app_producer(app: Any) -> Any:
    """The app's started aiokafka producer, for whole record batches (stream.kafka.publish)."""
    return app.producer._ensure_producer()


async def wait_for_topic_metadata(producer: Any, topic: str) -> None:
    """Fetch `topic`'s metadata into the aiokafka producer, as its send() does first."""
    await producer.client._wait_on_metadata(topic)


# -- table recovery (why: stream.kafka.recovery) --------------------------------------------
TrueEnds = Callable[[list[TP]], Awaitable[dict[TP, int]]]
_TRUE_ENDS: weakref.WeakKeyDictionary[Any, TrueEnds] = weakref.WeakKeyDictionary()


def raise_recovery_highwaters(app: Any, true_ends: TrueEnds) -> None:
    """After Faust reads the changelog highwaters it will recover this app's tables up to,
    raise each to `true_ends` (the offset of the next record to be written)."""
    _TRUE_ENDS[app] = true_ends
    cls: Any = Recovery
    if getattr(cls, "_lamstream_highwaters", False):
        return
    original = cls._build_highwaters

    async def build(self: Recovery, consumer: Any, tps: set[TP], destination: Counter[TP],
                    title: str) -> None:
        await original(self, consumer, tps, destination, title)
        ends_of = _TRUE_ENDS.get(self.app)
        if ends_of is None or not tps:
            return
        for tp, end in (await ends_of(sorted(tps))).items():
            # Faust keeps "highwater" as the offset of the last record (end - 1)
            if end - 1 > destination.get(tp, -1):
                log.info("changelog %s:%d ends at %d, the broker reported %d", tp.topic,
                         tp.partition, end, destination.get(tp, -1) + 1)
                destination[tp] = end - 1

    cls._build_highwaters = build
    cls._lamstream_highwaters = True


# -- the table store ------------------------------------------------------------------------
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
    """Within it, the table store reads and writes `partition`'s data."""
    ev = _PartitionEvent(partition)
    token = _current_event.set(weakref.ref(ev))  # type: ignore[arg-type]
    try:
        yield
    finally:
        _current_event.reset(token)


def is_rocksdb(store: Any) -> bool:
    """Whether the store keeps one RocksDB database per partition (what the calls below use)."""
    return hasattr(store, "_db_for_partition") and hasattr(store, "_key_index")


def partition_db(store: Any, partition: int) -> Any:
    """The partition's RocksDB database (opened on first use), for raw bytes in and out
    without the store's per-call layers (2.6 against 4.9 us per key written)."""
    return store._db_for_partition(partition)


def key_index(store: Any) -> Any:
    """The store's key -> partition index, which its own reads consult: a key written
    straight into a partition database must be entered here too."""
    return store._key_index


def open_partitions(store: Any) -> list[int]:
    """The partitions whose databases are open in this store (RocksDB only)."""
    return list(store._dbs)
