"""Publish a micro-batch's records as one Kafka record batch per topic-partition.

aiokafka's per-record `send()` costs ~20 µs (partitioner, accumulator, one future per
record); appending to a `BatchBuilder` and handing whole batches to `send_batch()` costs a
few µs per record. Keys are partitioned exactly like Kafka's default partitioner
(murmur2(key) & 0x7fffffff % partitions), so consumers see the same placement as with
`send()`, and records of one key keep their order.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from stream.errors import InfraError, PoisonMessage
from stream.kafka.faust_patches import app_producer, wait_for_topic_metadata


def default_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java client, kafka-python, aiokafka) gives
    a keyed record."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


# what BatchPublisher.send_all hands back and wait takes: per record batch sent, its
# topic-partition, its record count and the future of the broker's ack
Sent = list[tuple[tuple[str, int], int, "asyncio.Future[Any]"]]


class BatchPublisher:
    """Collects records during a batch; `flush()` sends them and returns delivery futures."""

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._builders: dict[tuple[str, int], Any] = {}
        self._counts: dict[tuple[str, int], int] = {}
        self._futures: Sent = []
        self._parts: dict[str, int] = {}
        self._key_part: dict[int, dict[bytes, int]] = {}

    def partitions(self, topic: str) -> int:
        n = self._parts.get(topic)
        if n is None:
            found = self._producer.client.cluster.partitions_for_topic(topic)
            if not found:
                raise InfraError(f"topic {topic!r} has no partitions in the metadata")
            n = self._parts[topic] = len(found)
        return n

    def partition_for(self, topic: str, key: bytes) -> int:
        n = self.partitions(topic)
        # one cache per partition count, keyed by the bytes themselves: tuple keys would be
        # 200k containers for the garbage collector to scan, bytes and ints are not tracked
        cache = self._key_part.get(n)
        if cache is None:
            cache = self._key_part[n] = {}
        p = cache.get(key)
        if p is None:
            if len(cache) > 200_000:
                cache.clear()
            p = cache[key] = default_partition(key, n)
        return p

    async def add(self, topic: str, key: bytes | None, value: bytes | None,
                  partition: int | None = None) -> None:
        if partition is None:
            if key is None:
                partition = 0
            else:
                try:
                    partition = self.partition_for(topic, key)
                except InfraError:
                    # not in the producer's metadata (its first record here, after the
                    # metadata narrowed to other topics): fetch it, as send() would
                    try:
                        await wait_for_topic_metadata(self._producer, topic)
                    except KafkaError as exc:
                        raise InfraError(f"no metadata for topic {topic!r}: {exc!r}") from exc
                    partition = self.partition_for(topic, key)
        tp = (topic, partition)
        builder = self._builders.get(tp)
        if builder is None:
            builder = self._builders[tp] = self._producer.create_batch()
            self._counts[tp] = 0
        if builder.append(key=key, value=value, timestamp=None) is None:
            await self._send(tp)  # full: ship it and start another
            builder = self._builders[tp] = self._producer.create_batch()
            self._counts[tp] = 0
            if builder.append(key=key, value=value, timestamp=None) is None:
                raise PoisonMessage("oversized", f"record of {len(value or b'')} bytes "
                                    "exceeds the producer's batch size")
        self._counts[tp] += 1

    async def _send(self, tp: tuple[str, int]) -> None:
        builder = self._builders.pop(tp)
        count = self._counts.pop(tp)
        try:
            fut = await self._producer.send_batch(builder, tp[0], partition=tp[1])
        except KafkaError as exc:  # the broker's trouble, not the records': retried
            raise InfraError(f"sending to {tp[0]}[{tp[1]}] failed: {exc!r}") from exc
        self._futures.append((tp, count, fut))

    def discard(self) -> None:
        """Forget what this batch collected (after a failure: the batch is processed again)."""
        self._builders.clear()
        self._counts.clear()
        self._futures.clear()

    async def send_all(self) -> Sent:
        """Hand everything collected so far to the producer; returns the delivery futures of
        exactly those records (what `wait` takes), so the next batch may collect meanwhile.
        Kafka keeps each partition's records in send order across such calls."""
        for tp in list(self._builders):
            await self._send(tp)
        sent, self._futures = self._futures, []
        return sent

    @staticmethod
    async def wait(sent: Sent) -> dict[tuple[str, int], int]:
        """Wait for the broker's acks of `sent`; returns the last offset per topic-partition."""
        if not sent:
            return {}
        results = await asyncio.gather(*(f for _, _, f in sent))
        last: dict[tuple[str, int], int] = {}
        for (tp, count, _), md in zip(sent, results, strict=True):
            last[tp] = max(last.get(tp, -1), md.offset + count - 1)
        return last

    async def flush(self) -> dict[tuple[str, int], int]:
        """Send everything and wait for the broker's acks; returns the last offset per tp."""
        return await self.wait(await self.send_all())


class LazyPublisher:
    """One agent's BatchPublisher on its Faust app's producer, made on first call (the
    producer exists once the app has started). Each agent needs its own: a publisher's
    `flush` and `discard` act on everything collected since the last one."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._out: BatchPublisher | None = None

    def __call__(self) -> BatchPublisher:
        if self._out is None:
            self._out = BatchPublisher(app_producer(self._app))
        return self._out
