"""BatchPublisher: a topic missing from the producer's metadata is looked up, not fatal."""

from __future__ import annotations

import asyncio
from typing import Any

from stream.kafka.publish import BatchPublisher


class _Cluster:
    def __init__(self) -> None:
        self.known: dict[str, set[int]] = {}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.known.get(topic)


class _Client:
    def __init__(self) -> None:
        self.cluster = _Cluster()
        self.fetched: list[str] = []

    async def _wait_on_metadata(self, topic: str) -> set[int]:
        self.fetched.append(topic)
        self.cluster.known[topic] = {0, 1, 2}
        return self.cluster.known[topic]


class _Batch:
    def append(self, **kwargs: Any) -> object:
        return object()


class _Producer:
    def __init__(self) -> None:
        self.client = _Client()

    def create_batch(self) -> _Batch:
        return _Batch()


def test_a_topic_missing_from_the_metadata_is_fetched_once() -> None:
    producer = _Producer()
    out = BatchPublisher(producer)

    async def go() -> None:
        await out.add("events.dlq", b"u1", b"{}")  # the producer's metadata lacks the topic
        await out.add("events.dlq", b"u2", b"{}")
        await out.add("events.dlq", None, b"{}")  # no key: partition 0, no lookup

    asyncio.run(go())
    assert producer.client.fetched == ["events.dlq"]
    assert out.partitions("events.dlq") == 3
