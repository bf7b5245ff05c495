"""PredictionSubscriber and tail(): lamstream's outputs read back, on kafka-python."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from stream.client.codec import ConsumerRecord, decode_record, log, pick_types
from stream.client.config import as_settings, group_config
from stream.client.offsets import HandedOut, Partition, seek_target
from stream.errors import ClientError, InfraError
from stream.kafka.consumers import assign_all, kafka_consumer
from stream.settings import Settings, load_settings


class PredictionSubscriber:
    """Typed records (`ConsumerRecord`: topic, partition, offset, timestamp, key, headers and
    a Recommendation / RiskAlert / DlqRecord / Feedback / RiskFeedback `value`) from
    lamstream's outputs; recommendations and risk alerts unless `topics` says otherwise.

    With `group_id` it joins that consumer group (partitions shared with other members): with
    enable_auto_commit (the default) it commits what it has handed out at the next poll and on
    close (at least once); without, only `commit()` commits. `max_poll_interval_ms` defaults to
    Kafka's 300 s, and to 10 s against the embedded broker. Without a group it reads every
    partition itself (manual assignment) from the beginning or from the end, and commits
    nothing. Records that do not parse are logged and skipped. Against tansu a new group with
    from_beginning=False starts at the reported "latest", so it may first see the tail of the
    last batch.
    """

    def __init__(
        self,
        settings_or_bootstrap: Settings | str,
        *,
        topics: Sequence[str] | None = None,
        group_id: str | None = None,
        from_beginning: bool = False,
        enable_auto_commit: bool = True,
        max_poll_interval_ms: int | None = None,
        poll_timeout: float = 0.5,
        metadata_timeout: float = 10.0,
        client_id: str = "lamstream-subscriber",
    ) -> None:
        self.settings = as_settings(settings_or_bootstrap)
        self._types = pick_types(self.settings, topics)
        self.topics = list(self._types)
        self.group_id = group_id
        self.enable_auto_commit = enable_auto_commit
        self.poll_timeout = poll_timeout
        self.skipped = 0
        self._stopping = False
        self._handed_out = HandedOut()
        self._consumer: KafkaConsumer | None
        if group_id:
            self._consumer = kafka_consumer(
                self.settings, client_id, fetch_max_wait_ms=100,
                **group_config(self.settings, group_id, from_beginning=from_beginning,
                               max_poll_interval=max_poll_interval_ms))
            self._consumer.subscribe(self.topics)
            return
        self._consumer = kafka_consumer(self.settings, client_id, enable_auto_commit=False,
                                        fetch_max_wait_ms=100)
        try:
            assign_all(self._consumer, self.topics, from_beginning, metadata_timeout)
        except BaseException:
            self._consumer.close()
            raise

    @classmethod
    def from_env(cls, **options: Any) -> PredictionSubscriber:
        """A subscriber on the settings the worker reads (LAMSTREAM_*: bootstrap servers, TLS,
        SASL, topic prefix); `options` as for the constructor."""
        return cls(load_settings(), **options)

    def _open(self) -> KafkaConsumer:
        if self._consumer is None:
            raise ClientError("subscriber is closed")
        return self._consumer

    def _poll(self, timeout: float) -> list[tuple[TopicPartition, int, ConsumerRecord | None]]:
        """Records of one poll with their positions, None for those that did not parse."""
        consumer = self._open()
        if self.enable_auto_commit:
            self._commit_handed_out()
        try:
            batch = consumer.poll(timeout_ms=int(timeout * 1000))
        except KafkaError as exc:
            raise InfraError(f"poll failed: {exc}") from None
        out = []
        for tp, records in batch.items():
            for r in records:
                rec = decode_record(self._types, tp.topic, tp.partition, r.offset, r.timestamp,
                                    r.key, r.value, r.headers)
                self.skipped += rec is None
                out.append((tp, r.offset, rec))
        return out

    def poll(self, timeout: float | None = None) -> list[ConsumerRecord]:
        """Whatever arrives within `timeout` seconds (default poll_timeout); may be empty."""
        items = self._poll(self.poll_timeout if timeout is None else timeout)
        for tp, offset, _ in items:
            self._handed_out.mark(tp.topic, tp.partition, offset)
        return [r for _, _, r in items if r is not None]

    def __iter__(self) -> Iterator[ConsumerRecord]:
        """Yields records as they arrive, until stop() or close()."""
        self._stopping = False
        while not self._stopping and self._consumer is not None:
            for tp, offset, rec in self._poll(self.poll_timeout):
                # Marked before the yield returns: a record counts as handed out once yielded.
                self._handed_out.mark(tp.topic, tp.partition, offset)
                if rec is not None:
                    yield rec

    def stop(self) -> None:
        """Make a running iteration end after its current poll (safe from another thread)."""
        self._stopping = True

    def commit(self, record: ConsumerRecord | None = None) -> None:
        """Commit (synchronously) every record handed out so far, or, given a record, its
        partition up to and including it. Needs a group_id; InfraError when the group has
        moved on (a rebalance: the records will be delivered again)."""
        consumer = self._open()
        if not self.group_id:
            raise ClientError("commit() needs a subscriber with a group_id")
        offsets = self._handed_out.to_commit(record)
        if not offsets:
            return
        try:
            consumer.commit(offsets={TopicPartition(*tp): OffsetAndMetadata(off, "", -1)
                                     for tp, off in offsets.items()})
        except KafkaError as exc:
            raise InfraError(f"offset commit failed: {exc}") from None
        self._handed_out.committed(offsets)

    def _commit_handed_out(self) -> None:
        if not self.group_id or not self._handed_out.next:
            return
        try:
            self.commit()
        except InfraError as exc:  # e.g. a rebalance: these records will be seen again
            log.warning("%s (records may be delivered again)", exc)
            self._handed_out.forget()

    def assignment(self) -> set[Partition]:
        """The (topic, partition) pairs read now (in a group: after a poll has joined)."""
        return {Partition(tp.topic, tp.partition) for tp in self._open().assignment()}

    def seek(self, partition: int | tuple[str, int], offset: int, *,
             topic: str | None = None) -> None:
        """Read `partition` (a number of `topic`, default the one topic read; or a
        TopicPartition) from `offset` on, from the next poll. In a group, only a partition
        assigned to this member (poll first)."""
        consumer = self._open()
        tp = seek_target(self.topics, partition, topic, offset, self.assignment())
        consumer.seek(TopicPartition(*tp), offset)
        self._handed_out.forget(tp)  # what was handed out before the seek is not a position

    def close(self) -> None:
        """Commit what was handed out (group mode with auto commit), leave the group, close.
        Idempotent."""
        if self._consumer is None:
            return
        try:
            if self.enable_auto_commit:
                self._commit_handed_out()
        finally:
            consumer, self._consumer = self._consumer, None
            consumer.close(autocommit=False)

    def __enter__(self) -> PredictionSubscriber:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _loose(value: bytes | None) -> Any:
    """A value decoded as JSON, else as text."""
    if value is None:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value.decode("utf-8", "replace")


def tail(
    settings_or_bootstrap: Settings | str,
    topic: str,
    *,
    from_beginning: bool = False,
    max_records: int | None = None,
    timeout: float | None = None,
) -> Iterator[tuple[str | None, Any]]:
    """Yields (key, value) of any topic: the value decoded as JSON, else as text.

    Ends after `max_records`, or once no record has arrived for `timeout` seconds (None:
    follow forever). Reads every partition without a consumer group, so it commits nothing.
    """
    settings = as_settings(settings_or_bootstrap)
    consumer = kafka_consumer(settings, "lamstream-tail", enable_auto_commit=False,
                              fetch_max_wait_ms=100)
    try:
        assign_all(consumer, [topic], from_beginning, 10.0)
        seen = 0
        last = time.monotonic()
        while max_records is None or seen < max_records:
            try:
                batch = consumer.poll(timeout_ms=200)
            except KafkaError as exc:
                raise InfraError(f"poll failed: {exc}") from None
            if not batch:
                if timeout is not None and time.monotonic() - last >= timeout:
                    return
                continue
            last = time.monotonic()
            for records in batch.values():
                for r in records:
                    key = r.key.decode("utf-8", "replace") if r.key is not None else None
                    yield key, _loose(r.value)
                    seen += 1
                    if max_records is not None and seen >= max_records:
                        return
    finally:
        consumer.close()
