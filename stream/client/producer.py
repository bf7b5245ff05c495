"""EventProducer: user events onto `events`, keyed by user id, on kafka-python."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Literal

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from stream.client.codec import Headers, encode_event, encode_headers
from stream.client.config import as_settings
from stream.errors import ClientError, InfraError
from stream.schemas import Event, ModelUpdate
from stream.settings import Settings, load_settings
from stream.topics import topics_for

log = logging.getLogger("stream.client")

# on_delivery(err, metadata), as confluent-kafka calls it: err None and kafka-python's
# RecordMetadata (topic, partition, offset, timestamp) once acknowledged, else the exception
# and None. Called on kafka-python's I/O thread: keep it short.
DeliveryCallback = Callable[[BaseException | None, Any], None]


class EventProducer:
    """Sends user events to the `events` topic, keyed by user id, batched by kafka-python.

    The key is the user id and the partition kafka-python's default partitioner picks for it
    (murmur2, as the Java client): every event of a user lands on one partition, where the
    worker keeps that user's state. `send()` validates an event before it leaves the process
    (ClientError, nothing sent); `send_raw()` sends bytes as they are, for tools and tests that
    need malformed input. Delivery is asynchronous: `send()` returns kafka-python's future;
    `flush()` waits.
    """

    def __init__(
        self,
        settings_or_bootstrap: Settings | str,
        *,
        topic: str | None = None,
        validate: bool = True,
        linger_ms: int = 5,
        batch_size: int = 64 * 1024,
        acks: int | str = "all",
        compression_type: str | None = None,
        max_event_bytes: int | None = None,
        client_id: str = "lamstream-producer",
    ) -> None:
        self.settings = as_settings(settings_or_bootstrap)
        self.topic = topic or topics_for(self.settings).events.name
        self.validate = validate
        self.max_event_bytes = max_event_bytes or self.settings.max_event_bytes
        self.sent = 0
        self.failed = 0
        try:
            self._producer: KafkaProducer | None = KafkaProducer(
                **self.settings.kafka_python_config(), client_id=client_id,
                linger_ms=linger_ms, batch_size=batch_size, acks=acks,
                compression_type=compression_type)
        except KafkaError as exc:
            raise InfraError(f"cannot connect producer to {self.settings.bootstrap}: "
                             f"{exc}") from None

    @classmethod
    def from_env(cls, **options: Any) -> EventProducer:
        """A producer on the settings the worker reads (LAMSTREAM_*: bootstrap servers, TLS,
        SASL, topic prefix); `options` as for the constructor."""
        return cls(load_settings(), **options)

    def send(self, event: Event | Mapping[str, Any], *, topic: str | None = None,
             headers: Headers | None = None, timestamp_ms: int | None = None,
             partition: int | None = None, on_delivery: DeliveryCallback | None = None
             ) -> Any:
        """Validate (unless validate=False), serialise with orjson and queue one event.

        An integer user_id or item_id is sent as its decimal string. `headers`: (name, bytes
        or str) pairs or a mapping. `timestamp_ms`: the Kafka record timestamp (default: now;
        the event time is the event's `ts`). `partition` overrides the partitioner: keep
        each user on one partition. Returns kafka-python's FutureRecordMetadata
        (`.get(timeout)` for the offset); `on_delivery(err, metadata)` is called as well.
        """
        value, key = encode_event(event, validate=self.validate,
                                  max_event_bytes=self.max_event_bytes)
        return self.send_raw(value, key, topic=topic, headers=headers,
                             timestamp_ms=timestamp_ms, partition=partition,
                             on_delivery=on_delivery)

    def send_raw(self, value: bytes | None, key: bytes | None = None, *,
                 topic: str | None = None, headers: Headers | None = None,
                 timestamp_ms: int | None = None, partition: int | None = None,
                 on_delivery: DeliveryCallback | None = None) -> Any:
        """Queue bytes exactly as given (no validation); for tools and tests."""
        if self._producer is None:
            raise ClientError("producer is closed")
        target = topic or self.topic
        try:
            future = self._producer.send(target, value=value, key=key,
                                         headers=encode_headers(headers),
                                         partition=partition, timestamp_ms=timestamp_ms)
        except KafkaTimeoutError as exc:
            raise InfraError(f"no metadata for topic {target!r} from "
                             f"{self.settings.bootstrap}: {exc}") from None
        except KafkaError as exc:
            raise InfraError(f"send to {target!r} failed: {exc}") from None
        except ValueError as exc:  # kafka-python's word for a partition the topic lacks
            raise ClientError(f"cannot send to {target!r}: {exc}") from None
        future.add_callback(self._delivered)
        future.add_errback(self._not_delivered)
        if on_delivery is not None:
            future.add_callback(lambda metadata: on_delivery(None, metadata))
            future.add_errback(lambda exc: on_delivery(exc, None))
        return future

    def _delivered(self, _metadata: Any) -> None:
        self.sent += 1

    def _not_delivered(self, exc: BaseException) -> None:
        self.failed += 1
        if self.failed <= 5 or self.failed % 1000 == 0:
            log.error("event not delivered to %s (%d so far): %s", self.topic, self.failed, exc)

    def flush(self, timeout: float | None = None) -> None:
        """Block until every queued event is acknowledged (or failed); InfraError on timeout."""
        if self._producer is None:
            return
        try:
            self._producer.flush(timeout=timeout)
        except KafkaTimeoutError:
            raise InfraError(f"flush did not finish within {timeout}s "
                             f"(broker {self.settings.bootstrap})") from None

    def close(self, timeout: float | None = 10.0) -> None:
        """Flush, then close. Idempotent."""
        if self._producer is None:
            return
        try:
            self.flush(timeout)
        finally:
            producer, self._producer = self._producer, None
            producer.close(timeout=timeout)

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def announce_model(settings: Settings, name: str, version: str,
                   action: Literal["publish", "rollback"] = "publish",
                   timeout: float = 10.0) -> ModelUpdate:
    """Tell every worker on `settings`' cluster to serve `name` `version` (published in the
    registry under their data dir) from their next batch: one record on `model-updates`."""
    update = ModelUpdate(name=name, version=version, action=action,
                         ts=int(time.time() * 1000))
    with EventProducer(settings, topic=topics_for(settings).model_updates.name,
                       validate=False, client_id="lamstream-model-announcer") as p:
        future = p.send_raw(update.model_dump_json().encode(), name.encode())
        try:
            future.get(timeout=timeout)
        except KafkaError as exc:
            raise InfraError(f"model-updates record for {name} {version} not delivered to "
                             f"{settings.bootstrap}: {exc}") from None
    return update
