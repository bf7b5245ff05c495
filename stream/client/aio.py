"""The asyncio SDK on aiokafka: AsyncEventProducer and AsyncPredictionSubscriber, same shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from stream.client.codec import (
    ConsumerRecord,
    Headers,
    decode_record,
    encode_event,
    encode_headers,
    log,
    pick_types,
)
from stream.client.config import GROUP_TIMING, as_settings, max_poll_interval_ms
from stream.client.offsets import HandedOut, Partition, seek_target
from stream.client.producer import DeliveryCallback
from stream.errors import ClientError, InfraError
from stream.kafka.consumers import start_positions
from stream.schemas import Event
from stream.settings import Settings, load_settings
from stream.topics import topics_for


def _report(future: asyncio.Future[Any], on_delivery: DeliveryCallback) -> None:
    if future.cancelled():
        on_delivery(asyncio.CancelledError(), None)
    elif (exc := future.exception()) is not None:
        on_delivery(exc, None)
    else:
        on_delivery(None, future.result())


class AsyncEventProducer:
    """EventProducer for asyncio services: the same validation, keys (murmur2 partitioner, as
    kafka-python's) and send() options, on aiokafka. `async with` starts and stops it;
    `await send(...)` queues an event and returns an asyncio future of aiokafka's
    RecordMetadata."""

    def __init__(self, settings_or_bootstrap: Settings | str, *, topic: str | None = None,
                 validate: bool = True, linger_ms: int = 5, acks: int | str = "all",
                 max_event_bytes: int | None = None,
                 client_id: str = "lamstream-producer") -> None:
        self.settings = as_settings(settings_or_bootstrap)
        self.topic = topic or topics_for(self.settings).events.name
        self.validate = validate
        self.max_event_bytes = max_event_bytes or self.settings.max_event_bytes
        self.sent = 0
        self.failed = 0
        self._producer = AIOKafkaProducer(**self.settings.aiokafka_config(),
                                          client_id=client_id, linger_ms=linger_ms, acks=acks)
        self._started = False

    @classmethod
    def from_env(cls, **options: Any) -> AsyncEventProducer:
        """A producer on the settings the worker reads (LAMSTREAM_*)."""
        return cls(load_settings(), **options)

    async def start(self) -> None:
        try:
            await self._producer.start()
        except KafkaError as exc:
            raise InfraError(f"cannot connect producer to {self.settings.bootstrap}: "
                             f"{exc}") from None
        self._started = True

    async def send(self, event: Event | Mapping[str, Any], *, topic: str | None = None,
                   headers: Headers | None = None, timestamp_ms: int | None = None,
                   partition: int | None = None, on_delivery: DeliveryCallback | None = None
                   ) -> asyncio.Future[Any]:
        """As EventProducer.send; returns the delivery future (await it for the metadata)."""
        value, key = encode_event(event, validate=self.validate,
                                  max_event_bytes=self.max_event_bytes)
        if not self._started:
            raise ClientError("producer is not started (use `async with` or start())")
        try:
            future: asyncio.Future[Any] = await self._producer.send(
                topic or self.topic, value=value, key=key, partition=partition,
                timestamp_ms=timestamp_ms, headers=encode_headers(headers))
        except KafkaError as exc:
            raise InfraError(f"send to {topic or self.topic!r} failed: {exc}") from None
        future.add_done_callback(self._count)
        if on_delivery is not None:
            future.add_done_callback(lambda f: _report(f, on_delivery))
        return future

    def _count(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            self.failed += 1
        else:
            self.sent += 1

    async def flush(self) -> None:
        """Wait until every queued event is acknowledged (or failed)."""
        if self._started:
            await self._producer.flush()

    async def close(self) -> None:
        """Flush, then stop. Idempotent."""
        if self._started:
            self._started = False
            await self._producer.stop()

    async def __aenter__(self) -> AsyncEventProducer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


class AsyncPredictionSubscriber:
    """PredictionSubscriber for asyncio services, on aiokafka: the same topics, typed
    ConsumerRecords, groups, auto or manual `await commit()`, `seek()` and poll intervals.
    `async with` starts and closes it; `await poll()` or `async for record in subscriber`."""

    def __init__(self, settings_or_bootstrap: Settings | str, *,
                 topics: Sequence[str] | None = None, group_id: str | None = None,
                 from_beginning: bool = False, enable_auto_commit: bool = True,
                 max_poll_interval_ms: int | None = None, poll_timeout: float = 0.5,
                 metadata_timeout: float = 10.0,
                 client_id: str = "lamstream-subscriber") -> None:
        self.settings = as_settings(settings_or_bootstrap)
        self._types = pick_types(self.settings, topics)
        self.topics = list(self._types)
        self.group_id = group_id
        self.from_beginning = from_beginning
        self.enable_auto_commit = enable_auto_commit
        self.max_poll_interval_ms = max_poll_interval_ms
        self.poll_timeout = poll_timeout
        self.metadata_timeout = metadata_timeout
        self.client_id = client_id
        self.skipped = 0
        self._stopping = False
        self._handed_out = HandedOut()
        self._consumer: AIOKafkaConsumer | None = None

    @classmethod
    def from_env(cls, **options: Any) -> AsyncPredictionSubscriber:
        """A subscriber on the settings the worker reads (LAMSTREAM_*)."""
        return cls(load_settings(), **options)

    async def start(self) -> None:
        """Connect; join the group (group_id) or assign every partition at its start."""
        cfg: dict[str, Any] = {**self.settings.aiokafka_config(), "client_id": self.client_id,
                               "enable_auto_commit": False, "fetch_max_wait_ms": 100}
        if self.group_id:
            interval = await asyncio.to_thread(max_poll_interval_ms, self.settings,
                                               self.max_poll_interval_ms)
            cfg.update(group_id=self.group_id, max_poll_interval_ms=interval,
                       auto_offset_reset="earliest" if self.from_beginning else "latest",
                       **GROUP_TIMING)
            consumer = AIOKafkaConsumer(*self.topics, **cfg)
        else:
            positions = await asyncio.to_thread(start_positions, self.settings, self.topics,
                                                self.from_beginning, self.metadata_timeout)
            consumer = AIOKafkaConsumer(**cfg)
        try:
            await consumer.start()
        except KafkaError as exc:
            raise InfraError(f"cannot connect consumer to {self.settings.bootstrap}: "
                             f"{exc}") from None
        if not self.group_id:
            consumer.assign([TopicPartition(*tp) for tp in positions])
            for tp, offset in positions.items():
                consumer.seek(TopicPartition(*tp), offset)
        self._consumer = consumer

    def _open(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise ClientError("subscriber is not started or is closed")
        return self._consumer

    async def _fetch(self, timeout: float) -> list[tuple[str, int, int, ConsumerRecord | None]]:
        """Records of one fetch with their positions, None for those that did not parse."""
        consumer = self._open()
        if self.enable_auto_commit:
            await self._commit_handed_out()
        try:
            batch = await consumer.getmany(timeout_ms=int(timeout * 1000))
        except KafkaError as exc:
            raise InfraError(f"poll failed: {exc}") from None
        out: list[tuple[str, int, int, ConsumerRecord | None]] = []
        for tp, records in batch.items():
            for r in records:
                rec = decode_record(self._types, tp.topic, tp.partition, r.offset, r.timestamp,
                                    r.key, r.value, r.headers)
                self.skipped += rec is None
                out.append((tp.topic, tp.partition, r.offset, rec))
        return out

    async def poll(self, timeout: float | None = None) -> list[ConsumerRecord]:
        """Whatever arrives within `timeout` seconds (default poll_timeout); may be empty."""
        items = await self._fetch(self.poll_timeout if timeout is None else timeout)
        for topic, partition, offset, _ in items:
            self._handed_out.mark(topic, partition, offset)
        return [rec for *_, rec in items if rec is not None]

    async def __aiter__(self) -> AsyncIterator[ConsumerRecord]:
        """Yields records as they arrive, until stop() or close()."""
        self._stopping = False
        while not self._stopping and self._consumer is not None:
            for topic, partition, offset, rec in await self._fetch(self.poll_timeout):
                # Marked before the yield returns: a record counts as handed out once yielded.
                self._handed_out.mark(topic, partition, offset)
                if rec is not None:
                    yield rec

    def stop(self) -> None:
        """Make a running iteration end after its current poll."""
        self._stopping = True

    async def commit(self, record: ConsumerRecord | None = None) -> None:
        """As PredictionSubscriber.commit: what was handed out, or up to `record`."""
        consumer = self._open()
        if not self.group_id:
            raise ClientError("commit() needs a subscriber with a group_id")
        offsets = self._handed_out.to_commit(record)
        if not offsets:
            return
        try:
            await consumer.commit({TopicPartition(*tp): off for tp, off in offsets.items()})
        except KafkaError as exc:
            raise InfraError(f"offset commit failed: {exc}") from None
        self._handed_out.committed(offsets)

    async def _commit_handed_out(self) -> None:
        if not self.group_id or not self._handed_out.next:
            return
        try:
            await self.commit()
        except InfraError as exc:  # e.g. a rebalance: these records will be seen again
            log.warning("%s (records may be delivered again)", exc)
            self._handed_out.forget()

    def assignment(self) -> set[Partition]:
        """The (topic, partition) pairs read now (in a group: after a poll has joined)."""
        return {Partition(tp.topic, tp.partition) for tp in self._open().assignment()}

    def seek(self, partition: int | tuple[str, int], offset: int, *,
             topic: str | None = None) -> None:
        """As PredictionSubscriber.seek."""
        consumer = self._open()
        tp = seek_target(self.topics, partition, topic, offset, self.assignment())
        consumer.seek(TopicPartition(*tp), offset)
        self._handed_out.forget(tp)

    async def close(self) -> None:
        """Commit what was handed out (group mode with auto commit), leave, close.
        Idempotent."""
        if self._consumer is None:
            return
        try:
            if self.enable_auto_commit:
                await self._commit_handed_out()
        finally:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def __aenter__(self) -> AsyncPredictionSubscriber:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()
