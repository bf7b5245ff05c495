"""kafka-python consumers as lamstream's readers build them: connected, or on every partition."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from stream.errors import ClientError, InfraError
from stream.kafka.admin import seek_to_end
from stream.settings import Settings


def kafka_consumer(settings: Settings, client_id: str, **config: Any) -> KafkaConsumer:
    """A KafkaConsumer with the settings' connection and security; InfraError if it cannot
    connect. `config` is passed on (group_id, enable_auto_commit, ...)."""
    try:
        return KafkaConsumer(**settings.kafka_python_config(), client_id=client_id, **config)
    except KafkaError as exc:
        raise InfraError(f"cannot connect consumer to {settings.bootstrap}: {exc}") from None


def assign_all(consumer: KafkaConsumer, topics: Sequence[str], from_beginning: bool,
               timeout: float) -> list[TopicPartition]:
    """Manual assignment of every partition, at the beginning or at the true end (ClientError
    for a topic that does not appear within `timeout` seconds)."""
    tps: list[TopicPartition] = []
    deadline = time.monotonic() + timeout
    for topic in topics:
        while not (parts := consumer.partitions_for_topic(topic)):
            if time.monotonic() >= deadline:
                raise ClientError(f"topic {topic!r} does not exist (run `lamstream topics` or "
                                  "start the worker first)")
            time.sleep(0.1)
        tps.extend(TopicPartition(topic, p) for p in sorted(parts))
    consumer.assign(tps)
    if from_beginning:
        consumer.seek_to_beginning(*tps)
    else:
        seek_to_end(consumer, tps)
    return tps


def start_positions(settings: Settings, topics: Sequence[str], from_beginning: bool,
                    timeout: float) -> dict[tuple[str, int], int]:
    """{(topic, partition): offset} of every partition at its beginning or its true end, for
    a client that assigns them itself (the asyncio subscriber); ClientError for a missing
    topic."""
    consumer = kafka_consumer(settings, "lamstream-positions", enable_auto_commit=False,
                              fetch_max_wait_ms=100)
    try:
        tps = assign_all(consumer, topics, from_beginning, timeout)
        return {(tp.topic, tp.partition): consumer.position(tp) for tp in tps}
    except KafkaError as exc:
        raise InfraError(f"cannot read the offsets of {', '.join(topics)}: {exc}") from None
    finally:
        consumer.close()
