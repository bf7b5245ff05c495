"""The user SDK on kafka-python: EventProducer in, PredictionSubscriber and tail() out."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from stream.errors import ClientError, InfraError
from stream.kafka.admin import seek_to_end
from stream.schemas import DlqRecord, Event, ModelUpdate, Recommendation, RiskAlert
from stream.settings import Settings
from stream.topics import topics_for

log = logging.getLogger(__name__)

Prediction = Recommendation | RiskAlert | DlqRecord

# Group settings that let a kafka-python consumer join within seconds (tansu needs the short
# session; a real Kafka accepts them: 6 s is its default group.min.session.timeout.ms).
GROUP_CONSUMER_CONFIG: dict[str, Any] = {
    "session_timeout_ms": 6000,
    "heartbeat_interval_ms": 1000,
    "max_poll_interval_ms": 10000,
}


def as_settings(settings_or_bootstrap: Settings | str) -> Settings:
    """Settings as given, or defaults around a bootstrap string ("host:port[,host:port]").

    A bare string reads no environment: plaintext, no topic prefix. For TLS/SASL or a prefix,
    pass a Settings (stream.settings.load_settings()).
    """
    if isinstance(settings_or_bootstrap, Settings):
        return settings_or_bootstrap
    if isinstance(settings_or_bootstrap, str) and settings_or_bootstrap.strip():
        return Settings.model_construct(bootstrap_servers=settings_or_bootstrap.strip())
    raise ClientError("expected Settings or a bootstrap string like 'localhost:9092', got "
                      f"{settings_or_bootstrap!r}")


def _describe(exc: ValidationError) -> str:
    errs = exc.errors()
    parts = [f"{'.'.join(str(x) for x in e['loc']) or 'event'}: {e['msg']}" for e in errs[:3]]
    return "; ".join(parts) + (f" (+{len(errs) - 3} more)" if len(errs) > 3 else "")


class EventProducer:
    """Sends user events to the `events` topic, keyed by user id, batched by kafka-python.

    `send()` validates an event before it leaves the process (ClientError, nothing sent);
    `send_raw()` sends bytes as they are, for tools and tests that need malformed input.
    Delivery is asynchronous: `send()` returns kafka-python's future; `flush()` waits.
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

    def _encode(self, event: Event | Mapping[str, Any]) -> tuple[bytes, bytes | None]:
        if not isinstance(event, Event | Mapping):
            raise ClientError(f"send() takes an Event or a dict, got {type(event).__name__}")
        if isinstance(event, Mapping) and self.validate:
            raw = dict(event)
            try:
                event = Event.model_validate(raw)
            except ValidationError as exc:
                eid = raw.get("event_id")
                which = f" {eid!r}" if isinstance(eid, str) else ""
                raise ClientError(f"invalid event{which}: {_describe(exc)}") from None
        if isinstance(event, Event):
            obj: Any = event.model_dump(mode="json", exclude_none=True)
            user = event.user_id
        else:
            obj = dict(event)
            user = obj.get("user_id")
        try:
            value = orjson.dumps(obj)
        except TypeError as exc:
            raise ClientError(f"event is not JSON serialisable: {exc}") from None
        if self.validate and len(value) > self.max_event_bytes:
            raise ClientError(f"event is {len(value)} bytes, the limit is "
                              f"{self.max_event_bytes} (LAMSTREAM_MAX_EVENT_BYTES)")
        return value, user.encode() if isinstance(user, str) else None

    def send(self, event: Event | Mapping[str, Any]) -> Any:
        """Validate (unless validate=False), serialise with orjson and queue one event.

        Returns kafka-python's FutureRecordMetadata (`.get(timeout)` for the offset).
        """
        value, key = self._encode(event)
        return self.send_raw(value, key)

    def send_raw(self, value: bytes | None, key: bytes | None = None, *,
                 topic: str | None = None) -> Any:
        """Queue bytes exactly as given (no validation); for tools and tests."""
        if self._producer is None:
            raise ClientError("producer is closed")
        try:
            future = self._producer.send(topic or self.topic, value=value, key=key)
        except KafkaTimeoutError as exc:
            raise InfraError(f"no metadata for topic {topic or self.topic!r} from "
                             f"{self.settings.bootstrap}: {exc}") from None
        except KafkaError as exc:
            raise InfraError(f"send failed: {exc}") from None
        future.add_callback(self._delivered)
        future.add_errback(self._not_delivered)
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


def _consumer(settings: Settings, client_id: str, **config: Any) -> KafkaConsumer:
    try:
        return KafkaConsumer(**settings.kafka_python_config(), client_id=client_id, **config)
    except KafkaError as exc:
        raise InfraError(f"cannot connect consumer to {settings.bootstrap}: {exc}") from None


def _assign_all(consumer: KafkaConsumer, topics: Sequence[str], from_beginning: bool,
                timeout: float) -> None:
    """Manual assignment of every partition, at the beginning or at the true end."""
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


class PredictionSubscriber:
    """Iterates typed Recommendation / RiskAlert (/ DlqRecord) objects from lamstream's outputs.

    With `group_id` it joins that consumer group (partitions shared with other members) and
    commits what it has handed out: at least once. Without, it reads every partition itself
    (manual assignment) from the beginning or from the end, and commits nothing. Records that
    do not parse are logged and skipped. Against tansu a new group with from_beginning=False
    starts at the reported "latest", so it may first see the tail of the last batch.
    """

    def __init__(
        self,
        settings_or_bootstrap: Settings | str,
        *,
        topics: Sequence[str] | None = None,
        group_id: str | None = None,
        from_beginning: bool = False,
        poll_timeout: float = 0.5,
        metadata_timeout: float = 10.0,
        client_id: str = "lamstream-subscriber",
    ) -> None:
        self.settings = as_settings(settings_or_bootstrap)
        spec = topics_for(self.settings)
        self.topics = list(topics or (spec.recommendations.name, spec.risk_alerts.name))
        readable: dict[str, type[Prediction]] = {
            spec.recommendations.name: Recommendation, spec.risk_alerts.name: RiskAlert,
            spec.dlq.name: DlqRecord}
        unknown = [t for t in self.topics if t not in readable]
        if unknown:
            raise ClientError(f"PredictionSubscriber reads {', '.join(readable)}; not "
                              f"{', '.join(unknown)} (use tail() for other topics)")
        self._types = {t: readable[t] for t in self.topics}
        self.group_id = group_id
        self.poll_timeout = poll_timeout
        self.skipped = 0
        self._stopping = False
        self._to_commit: dict[TopicPartition, int] = {}
        self._consumer: KafkaConsumer | None
        if group_id:
            self._consumer = _consumer(
                self.settings, client_id, group_id=group_id, enable_auto_commit=False,
                auto_offset_reset="earliest" if from_beginning else "latest",
                fetch_max_wait_ms=100, **GROUP_CONSUMER_CONFIG)
            self._consumer.subscribe(self.topics)
        else:
            self._consumer = _consumer(self.settings, client_id, enable_auto_commit=False,
                                       fetch_max_wait_ms=100)
            try:
                _assign_all(self._consumer, self.topics, from_beginning, metadata_timeout)
            except BaseException:
                self._consumer.close()
                raise

    def _decode(self, topic: str, partition: int, offset: int, value: bytes | None
                ) -> Prediction | None:
        try:
            if value is None:
                raise ValueError("record has no value")
            return self._types[topic].model_validate_json(value)
        except (ValidationError, ValueError) as exc:
            self.skipped += 1
            why = _describe(exc) if isinstance(exc, ValidationError) else str(exc)
            log.warning("skipping unreadable record %s[%d]@%d: %s", topic, partition, offset,
                        why.splitlines()[0][:300])
            return None

    def _poll(self, timeout: float) -> list[tuple[TopicPartition, int, Prediction | None]]:
        if self._consumer is None:
            raise ClientError("subscriber is closed")
        self._commit()
        try:
            batch = self._consumer.poll(timeout_ms=int(timeout * 1000))
        except KafkaError as exc:
            raise InfraError(f"poll failed: {exc}") from None
        out = []
        for tp, records in batch.items():
            for r in records:
                out.append((tp, r.offset, self._decode(tp.topic, tp.partition, r.offset,
                                                       r.value)))
        return out

    def poll(self, timeout: float | None = None) -> list[Prediction]:
        """Whatever arrives within `timeout` seconds (default poll_timeout); may be empty."""
        items = self._poll(self.poll_timeout if timeout is None else timeout)
        for tp, offset, _ in items:
            self._to_commit[tp] = offset + 1
        return [p for _, _, p in items if p is not None]

    def __iter__(self) -> Iterator[Prediction]:
        """Yields predictions as they arrive, until stop() or close()."""
        self._stopping = False
        while not self._stopping and self._consumer is not None:
            for tp, offset, pred in self._poll(self.poll_timeout):
                # Marked before the yield returns: a record counts as handed out once yielded.
                self._to_commit[tp] = offset + 1
                if pred is not None:
                    yield pred

    def stop(self) -> None:
        """Make a running iteration end after its current poll (safe from another thread)."""
        self._stopping = True

    def _commit(self) -> None:
        if not self.group_id or not self._to_commit or self._consumer is None:
            return
        offsets = {tp: OffsetAndMetadata(off, "", -1) for tp, off in self._to_commit.items()}
        try:
            self._consumer.commit(offsets=offsets)
            self._to_commit.clear()
        except KafkaError as exc:  # e.g. a rebalance: these records will be seen again
            log.warning("offset commit failed (records may be delivered again): %s", exc)
            self._to_commit.clear()

    def close(self) -> None:
        """Commit what was handed out (group mode), leave the group, close. Idempotent."""
        if self._consumer is None:
            return
        try:
            self._commit()
        finally:
            consumer, self._consumer = self._consumer, None
            consumer.close(autocommit=False)

    def __enter__(self) -> PredictionSubscriber:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


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
    consumer = _consumer(settings, "lamstream-tail", enable_auto_commit=False,
                         fetch_max_wait_ms=100)
    try:
        _assign_all(consumer, [topic], from_beginning, 10.0)
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
                    value: Any
                    try:
                        value = orjson.loads(r.value) if r.value is not None else None
                    except orjson.JSONDecodeError:
                        value = r.value.decode("utf-8", "replace")
                    yield key, value
                    seen += 1
                    if max_records is not None and seen >= max_records:
                        return
    finally:
        consumer.close()
