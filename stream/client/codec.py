"""What the SDK puts on the wire and takes off it: events out, typed records with metadata in."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import ValidationError

from stream.errors import ClientError
from stream.schemas import DlqRecord, Event, Feedback, Recommendation, RiskAlert, RiskFeedback
from stream.settings import Settings
from stream.topics import topics_for

log = logging.getLogger("stream.client")

Prediction = Recommendation | RiskAlert | DlqRecord
# What a subscriber hands out: the predictions, and the feedback the join writes for training.
# `decisions` stays internal (its shape follows the trainer, not a contract).
Value = Prediction | Feedback | RiskFeedback
# Header values as both kafka-python and confluent-kafka take them: (name, bytes) pairs, or a
# mapping; a str value is sent as its UTF-8 bytes.
Headers = Mapping[str, str | bytes] | Sequence[tuple[str, str | bytes]]

# Ids that real logs often carry as numbers; sent as their decimal string (the wire schema,
# and the worker's per-user state, key users by string).
_NUMERIC_IDS = ("user_id", "item_id")


@dataclass(frozen=True, slots=True)
class ConsumerRecord:
    """One record a subscriber read, named as kafka-python's ConsumerRecord names its fields.

    `timestamp` is the Kafka record timestamp (epoch ms), `key` the record key decoded as UTF-8
    (the user id; the pseudonym `user_key` on the feedback topics), `headers` a list of
    (name, bytes) pairs as kafka-python and confluent-kafka give them, `value` the typed record.
    """

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: str | None
    value: Value
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def describe(exc: ValidationError) -> str:
    """A pydantic error in one line: the first three problems with their field paths."""
    errs = exc.errors()
    parts = [f"{'.'.join(str(x) for x in e['loc']) or 'event'}: {e['msg']}" for e in errs[:3]]
    return "; ".join(parts) + (f" (+{len(errs) - 3} more)" if len(errs) > 3 else "")


def readable_topics(settings: Settings) -> dict[str, type[Value]]:
    """Topic name -> the record type a subscriber decodes it to."""
    spec = topics_for(settings)
    return {spec.recommendations.name: Recommendation, spec.risk_alerts.name: RiskAlert,
            spec.dlq.name: DlqRecord, spec.feedback.name: Feedback,
            spec.risk_feedback.name: RiskFeedback}


def pick_types(settings: Settings, topics: Sequence[str] | None) -> dict[str, type[Value]]:
    """The types of the topics a subscriber reads (default: recommendations and risk alerts);
    ClientError for a topic it cannot read."""
    readable = readable_topics(settings)
    spec = topics_for(settings)
    chosen = list(topics or (spec.recommendations.name, spec.risk_alerts.name))
    unknown = [t for t in chosen if t not in readable]
    if unknown:
        raise ClientError(f"PredictionSubscriber reads {', '.join(readable)}; not "
                          f"{', '.join(unknown)} (use tail() for other topics)")
    return {t: readable[t] for t in chosen}


def normalise_ids(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event with an integer user_id / item_id as its decimal string (a bool stays as it
    is, for validation to refuse)."""
    out = dict(event)
    for name in _NUMERIC_IDS:
        v = out.get(name)
        if isinstance(v, int) and not isinstance(v, bool):
            out[name] = str(v)
    return out


def encode_event(event: Event | Mapping[str, Any], *, validate: bool,
                 max_event_bytes: int) -> tuple[bytes, bytes | None]:
    """(value, key) of one event: validated unless `validate` is False, keyed by its user id."""
    if not isinstance(event, Event | Mapping):
        raise ClientError(f"send() takes an Event or a dict, got {type(event).__name__}")
    if isinstance(event, Mapping):
        raw = normalise_ids(event)
        if validate:
            try:
                event = Event.model_validate(raw)
            except ValidationError as exc:
                eid = raw.get("event_id")
                which = f" {eid!r}" if isinstance(eid, str) else ""
                raise ClientError(f"invalid event{which}: {describe(exc)}") from None
    obj: Any = (event.model_dump(mode="json", exclude_none=True) if isinstance(event, Event)
                else raw)
    user = obj.get("user_id")
    try:
        value = orjson.dumps(obj)
    except TypeError as exc:
        raise ClientError(f"event is not JSON serialisable: {exc}") from None
    if validate and len(value) > max_event_bytes:
        raise ClientError(f"event is {len(value)} bytes, the limit is {max_event_bytes} "
                          "(LAMSTREAM_MAX_EVENT_BYTES)")
    return value, user.encode() if isinstance(user, str) else None


def encode_headers(headers: Headers | None) -> list[tuple[str, bytes]] | None:
    """Headers as the (str, bytes) pairs both Kafka clients send; ClientError otherwise."""
    if headers is None:
        return None
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    out: list[tuple[str, bytes]] = []
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str)
                and isinstance(pair[1], str | bytes)):
            raise ClientError(f"headers are (str, bytes or str) pairs or a mapping; got {pair!r}")
        name, value = pair
        out.append((name, value.encode() if isinstance(value, str) else value))
    return out


def decode_record(types: Mapping[str, type[Value]], topic: str, partition: int, offset: int,
                  timestamp: int, key: bytes | None, value: bytes | None,
                  headers: Sequence[tuple[str, bytes]] | None) -> ConsumerRecord | None:
    """The typed record, or None (logged) when its value does not parse."""
    try:
        if value is None:
            raise ValueError("record has no value")
        typed = types[topic].model_validate_json(value)
    except (ValidationError, ValueError) as exc:
        why = describe(exc) if isinstance(exc, ValidationError) else str(exc)
        log.warning("skipping unreadable record %s[%d]@%d: %s", topic, partition, offset,
                    why.splitlines()[0][:300])
        return None
    return ConsumerRecord(
        topic=topic, partition=partition, offset=offset, timestamp=timestamp,
        key=key.decode("utf-8", "replace") if key is not None else None, value=typed,
        headers=[(str(k), bytes(v or b"")) for k, v in headers or ()])
