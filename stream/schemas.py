"""Pydantic models of every record on the wire, decoding at the edge, JSON Schema export.

The records lamstream writes are built by stream.records, one builder per model here.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from model.types import EventType
from stream.errors import FieldError, PoisonMessage

# 9999-12-31T23:59:59.999Z, the last instant ISO-8601 names. Beyond it is a unit mix-up (us, ns)
# that would drag the user's event time (and every later event's lateness) into the far future.
MAX_TS_MS = 253_402_300_799_999
# Any real price is far below this; the cap keeps price * quantity and every sum of them finite
# (inf would be stored as null and break the user's state).
MAX_PRICE = 1e15
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def _to_epoch_ms(v: Any) -> int:
    """Event time as epoch milliseconds: an integer (ms) or an ISO-8601 string."""
    if isinstance(v, bool):
        raise FieldError("ts must be epoch milliseconds or an ISO-8601 string, not a boolean")
    if isinstance(v, int | float):
        if not 0 <= v <= MAX_TS_MS:  # also rejects NaN
            raise FieldError(f"ts must be epoch milliseconds from 0 to {MAX_TS_MS}")
        return int(v)
    if isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v.replace("Z", "+00:00") if v.endswith("Z") else v)
        except ValueError:
            raise FieldError(f"ts {v[:40]!r} is not ISO-8601") from None
        if dt.tzinfo is None:
            raise FieldError("ISO-8601 ts needs a timezone (e.g. 'Z' or '+00:00')")
        ms = (dt - _EPOCH) // _ONE_MS  # exact; float seconds * 1000 can be 1 ms short
        if not 0 <= ms <= MAX_TS_MS:
            raise FieldError(f"ts {v[:40]!r} is outside 1970-01-01 .. 9999-12-31")
        return ms
    raise FieldError("ts must be epoch milliseconds or an ISO-8601 string")


EpochMs = Annotated[int, BeforeValidator(_to_epoch_ms, json_schema_input_type=int | str)]
Id = Annotated[str, Field(min_length=1, max_length=512)]


class Record(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="ignore")


class Event(Record):
    """A user event on the `events` topic (key: user_id)."""

    event_id: Id
    user_id: Id
    type: EventType
    item_id: Id
    ts: EpochMs = Field(description="Event time: epoch ms, or ISO-8601 string with timezone.")
    session_id: str | None = None
    category: str | None = None
    price: float | None = Field(None, ge=0, le=MAX_PRICE, allow_inf_nan=False)
    quantity: int | None = Field(None, ge=1)
    device_id: str | None = None
    ip: str | None = None
    attrs: dict[str, str] | None = None


class DlqRecord(Record):
    """A record that could not be processed, with its original bytes (`events.dlq`)."""

    error: str
    error_kind: str
    raw: str = Field(description="Original value bytes, base64.")
    key: str | None = Field(None, description="Original key bytes, base64.")
    topic: str
    partition: int
    offset: int
    received_at: int = Field(description="Epoch ms when lamstream received it.")

    def raw_bytes(self) -> bytes:
        return base64.b64decode(self.raw)


class RecItem(Record):
    item_id: str
    score: float
    propensity: float = Field(ge=0, le=1)


class Recommendation(Record):
    """Next items for a user, triggered by one event (`recommendations`, key: user_id)."""

    rec_id: str
    user_id: str
    event_id: str
    items: list[RecItem]
    model: str
    model_version: str
    ts: int = Field(description="Epoch ms when published.")
    event_ts: int = Field(description="Event time of the trigger (epoch ms).")
    latency_ms: float = Field(description="Event receipt to publish, ms.")
    explored: bool = Field(False, description="The exploration policy deviated from the "
                           "greedy top k for this slate.")


class RiskReason(Record):
    feature: str
    value: float
    contribution: float


class RiskAlert(Record):
    """A risk score that reached the threshold, with the features behind it (`risk-alerts`)."""

    alert_id: str
    user_id: str
    event_id: str
    score: float = Field(ge=0, le=1)
    threshold: float
    reasons: list[RiskReason]
    model_version: str
    ts: int
    event_ts: int
    latency_ms: float
    # the point-in-time snapshot the risk model scored (alerts are rare, so it costs little);
    # the risk-label join needs it for events that have no decision record (issue #5)
    features: dict[str, float] | None = None
    sequence: list[tuple[str, str, int]] | None = None


class Decision(Record):
    """One published recommendation as the worker decided it (`decisions`, internal, key:
    user_id): the shown items, the ranked pool with the logging policy's inclusion
    probabilities, an optional shadow policy's would-be slate, and the point-in-time
    features and item sequence the model saw. The feedback join reads it; nothing recomputes
    features later."""

    rec_id: str
    user_id: str
    event_id: str
    event_ts: int = Field(description="Event time of the trigger (epoch ms).")
    ts: int = Field(description="Epoch ms when published.")
    items: list[RecItem]
    model: str
    model_version: str
    policy: str = Field(description="Policy and its parameters at decision time.")
    explored: bool = Field(description="The slate differs from the greedy top k.")
    candidates: list[RecItem] = Field(description="The ranked pool; propensity = inclusion "
                                      "probability under the logging policy.")
    shadow_policy: str | None = None
    shadow_items: list[str] | None = None
    shadow_inclusion: list[float] | None = Field(
        None, description="Shadow policy's inclusion probability per candidate (same order).")
    base_scores: list[float] | None = Field(
        None, description="With a reranker serving: the base recommender's score per "
        "candidate (same order; candidates then carry the reranker's scores).")
    candidate_categories: list[str | None] | None = Field(
        None, description="Each candidate's category (same order) as the worker's item "
        "catalogue knew it; null where unknown. Absent when no category is known.")
    recent_categories: list[str | None] | None = Field(
        None, description="Categories of the user's last items (oldest first, the trigger "
        "last), as the catalogue knew them.")
    features: dict[str, float]
    sequence: list[tuple[str, str, int]] = Field(description="(item_id, type, ts) oldest "
                                                 "first, the trigger last.")
    category: str | None = Field(None, description="Category of the trigger event, if sent.")
    # the risk model's verdict on the same event (absent in records of older workers)
    risk_score: float | None = None
    risk_model_version: str | None = None
    risk_threshold: float | None = None


class ShownItem(Record):
    item_id: str
    score: float = 0.0
    propensity: float


class Feedback(Record):
    """The outcome of one recommendation, for training (`feedback`, key: user_key).

    No raw user id, IP or device id: the user is `user_key`, a keyed HMAC of the user id
    (`key_id` names the key, so a rotation is visible in the data)."""

    rec_id: str
    user_key: str
    key_id: str
    features: dict[str, float]
    sequence: list[tuple[str, str, int]]
    category: str | None = None
    shown: list[ShownItem]
    candidates: list[ShownItem] = Field(description="The ranked pool with the logging "
                                        "policy's inclusion probabilities.")
    engaged_item: str | None
    engaged_type: str | None
    reward: float
    model: str
    model_version: str
    policy: str
    explored: bool
    shadow_policy: str | None = None
    shadow_inclusion: list[float] | None = None
    base_scores: list[float] | None = None
    candidate_categories: list[str | None] | None = None
    recent_categories: list[str | None] | None = None
    decision_ts: int = Field(description="Event time of the decision's trigger (epoch ms).")
    outcome_ts: int = Field(description="Event time of the rewarding engagement, or the "
                            "window's end when there was none.")
    emitted_at: int = Field(description="Epoch ms when the join emitted this record.")


class ModelUpdate(Record):
    """A model version published or rolled back (`model-updates`)."""

    name: str
    version: str
    action: Literal["publish", "rollback"]
    ts: int


class RiskLabel(Record):
    """A ground-truth label for one event of a user, or for the user (`risk-labels`, key:
    user_id). `user_id` is required even with an `event_id`: labels are joined per user, on
    the partition that holds the user's scored events."""

    user_id: Id
    event_id: Id | None = Field(None, description="The labelled event; absent: the label "
                                "applies to the user's events in the window before `ts`.")
    label: Literal["fraud", "legit"]
    source: Annotated[str, Field(min_length=1, max_length=128)]
    ts: EpochMs = Field(description="When the label holds, on the events' clock: epoch ms "
                        "or ISO-8601 with timezone.")


class RiskFeedback(Record):
    """One scored event with its ground-truth label, for training the risk model
    (`risk-feedback`, key: user_key). No raw user id: the user is `user_key`, a keyed HMAC
    of the user id (as in Feedback)."""

    feedback_id: str = Field(description="Stable id of (event, label scope, label, source, "
                             "label ts): drop repeats (delivery is at least once).")
    user_key: str
    key_id: str
    event_id: str
    event_ts: int = Field(description="Event time of the scored event (epoch ms).")
    features: dict[str, float] = Field(description="As the risk model saw them.")
    sequence: list[tuple[str, str, int]]
    score: float = Field(ge=0, le=1)
    model_version: str = Field(description="The risk model's version.")
    threshold: float
    alerted: bool = Field(description="score >= threshold: a risk alert was published.")
    label: Literal["fraud", "legit"]
    label_scope: Literal["event", "user"] = Field(
        description="event: the label named this event; user: it named the user, and every "
        "scored event of the user in the window before `label_ts` carries it.")
    label_source: str
    label_ts: int
    emitted_at: int = Field(description="Epoch ms when the join emitted this record.")


WIRE_RECORDS: dict[str, type[Record]] = {
    "event": Event,
    "dlq": DlqRecord,
    "recommendation": Recommendation,
    "risk_alert": RiskAlert,
    "decision": Decision,
    "feedback": Feedback,
    "model_update": ModelUpdate,
    "risk_label": RiskLabel,
    "risk_feedback": RiskFeedback,
}


def _loc_part(part: int | str) -> str:
    """One step of an error's field path: a field name as it is; a key from the input (an
    attrs key can hold newlines, escapes or 60 KB) quoted and cut, so the error stays one
    short printable line."""
    if isinstance(part, int) or (part.isidentifier() and len(part) <= 64):
        return str(part)
    return repr(part[:64])


def _first_error(exc: ValidationError) -> str:
    errs = exc.errors()
    parts = []
    for err in errs[:3]:
        loc = ".".join(_loc_part(x) for x in err["loc"]) or "record"
        parts.append(f"{loc}: {err['msg']}")
    more = f" (+{len(errs) - 3} more)" if len(errs) > 3 else ""
    return "; ".join(parts) + more


def decode_event(raw: bytes | None, key: bytes | None, max_bytes: int) -> Event:
    """Bytes from the wire to a valid Event, or PoisonMessage saying exactly why not."""
    if not raw:
        raise PoisonMessage("empty", "record has no value (tombstone)" if raw is None
                            else "record value is empty (0 bytes)")
    if len(raw) > max_bytes:
        raise PoisonMessage("oversized", f"record is {len(raw)} bytes, limit is {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PoisonMessage("not_json", f"value is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PoisonMessage("schema", f"value is JSON {type(obj).__name__}, expected an object")
    try:
        event = Event.model_validate(obj)
    except ValidationError as exc:
        raise PoisonMessage("schema", _first_error(exc)) from None
    if key is not None and key != event.user_id.encode():
        shown = key[:64].decode("utf-8", "replace")
        raise PoisonMessage(
            "key_mismatch", f"record key {shown!r} differs from user_id {event.user_id[:64]!r}")
    return event


def decode_risk_label(raw: bytes | None, key: bytes | None, max_bytes: int) -> RiskLabel:
    """Bytes from `risk-labels` to a valid RiskLabel, or PoisonMessage saying why not. The
    record key must be the user id: the join finds the user's scored events on the partition
    the key selects (a label keyed otherwise would land where they are not)."""
    if not raw:
        raise PoisonMessage("empty", "record has no value (tombstone)" if raw is None
                            else "record value is empty (0 bytes)")
    if len(raw) > max_bytes:
        raise PoisonMessage("oversized", f"record is {len(raw)} bytes, limit is {max_bytes}")
    try:
        label = RiskLabel.model_validate_json(raw)
    except ValidationError as exc:
        if exc.errors()[0]["type"] == "json_invalid":
            raise PoisonMessage("not_json", f"value is not JSON: {exc.errors()[0]['msg']}"
                                ) from None
        raise PoisonMessage("schema", _first_error(exc)) from None
    if key != label.user_id.encode():
        shown = "no key" if key is None else repr(key[:64].decode("utf-8", "replace"))
        raise PoisonMessage("key_mismatch", f"label record key ({shown}) must be its user_id "
                            f"{label.user_id[:64]!r}")
    return label


def export_json_schemas(out_dir: Path) -> list[Path]:
    """Write one JSON Schema file per wire record; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in WIRE_RECORDS.items():
        path = out_dir / f"{name}.schema.json"
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        path.write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        written.append(path)
    return written
