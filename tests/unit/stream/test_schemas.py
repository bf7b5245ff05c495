"""The wire contract: decode_event accepts exactly the valid events, and says why not."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.errors import PoisonMessage
from stream.schemas import WIRE_RECORDS, DlqRecord, Event, decode_event, export_json_schemas

MAX = 65_536
TS = 1_717_243_200_000  # 2024-06-01T12:00:00Z


def valid(**changes: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"event_id": "e1", "user_id": "u1", "type": "view", "item_id": "i1",
                          "ts": TS}
    ev.update(changes)
    return {k: v for k, v in ev.items() if v is not ...}  # `...` drops a field


def decode(obj: Any, key: bytes | None = b"u1", max_bytes: int = MAX) -> Event:
    return decode_event(orjson.dumps(obj), key, max_bytes)


def poison(raw: bytes | None, key: bytes | None = b"u1", max_bytes: int = MAX) -> PoisonMessage:
    with pytest.raises(PoisonMessage) as info:
        decode_event(raw, key, max_bytes)
    assert "\n" not in info.value.message
    return info.value


# --- valid events ------------------------------------------------------------------------

def test_a_minimal_event() -> None:
    ev = decode(valid())
    assert (ev.event_id, ev.user_id, ev.type, ev.item_id, ev.ts) == ("e1", "u1", "view", "i1", TS)
    assert ev.price is ev.quantity is ev.session_id is ev.category is ev.attrs is None


def test_every_optional_field() -> None:
    ev = decode(valid(type="purchase", session_id="s1", category="shoes", price=19.99,
                      quantity=2, device_id="d1", ip="10.0.0.1", attrs={"utm": "mail"}))
    assert (ev.session_id, ev.category, ev.price, ev.quantity) == ("s1", "shoes", 19.99, 2)
    assert (ev.device_id, ev.ip, ev.attrs) == ("d1", "10.0.0.1", {"utm": "mail"})


@pytest.mark.parametrize("etype", ["view", "click", "add_to_cart", "purchase"])
def test_each_event_type(etype: str) -> None:
    assert decode(valid(type=etype)).type == etype


def test_boundary_values_are_valid() -> None:
    ev = decode(valid(price=0, quantity=1, ts=0))
    assert ev.price == 0 and ev.quantity == 1 and ev.ts == 0
    assert decode(valid(price=3)).price == 3.0  # JSON has one number type: 3 is a price


def test_unknown_fields_are_ignored_and_no_key_is_fine() -> None:
    ev = decode(valid(extra={"a": 1}, schema_version=3), key=None)
    assert ev.user_id == "u1" and not hasattr(ev, "extra")


@pytest.mark.parametrize(("text", "ms"), [
    ("2024-06-01T12:00:00Z", TS),
    ("2024-06-01T12:00:00+00:00", TS),
    ("2024-06-01T14:00:00+02:00", TS),
    ("2024-06-01T12:00:00.250Z", TS + 250),
    ("2024-06-01T12:00:00.250999Z", TS + 250),  # sub-millisecond digits are dropped
    ("1970-01-01T00:00:00Z", 0),
    ("2038-11-25T02:36:29.095Z", 2_174_265_389_095),  # float seconds would give ...094
])
def test_iso_8601_timestamps_become_exact_epoch_ms(text: str, ms: int) -> None:
    assert decode(valid(ts=text)).ts == ms


@settings(max_examples=200, deadline=None)
@given(ms=st.integers(0, 253_402_300_799_999), micros=st.integers(0, 999))
def test_iso_8601_and_epoch_ms_agree_to_the_millisecond(ms: int, micros: int) -> None:
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms, microseconds=micros)
    assert decode(valid(ts=dt.isoformat())).ts == ms


def test_a_float_epoch_ms_is_truncated_to_an_int() -> None:
    assert decode(valid(ts=float(TS) + 0.7)).ts == TS


# --- schema errors -------------------------------------------------------------------------

@pytest.mark.parametrize(("changes", "field"), [
    ({"user_id": 1}, "user_id"),  # strict: no coercion of numbers to strings
    ({"event_id": 7}, "event_id"),
    ({"item_id": None}, "item_id"),
    ({"price": "3"}, "price"),  # nor of strings to numbers
    ({"quantity": "2"}, "quantity"),
    ({"quantity": 1.5}, "quantity"),
    ({"quantity": 0}, "quantity"),
    ({"price": -0.01}, "price"),
    ({"type": "VIEW"}, "type"),
    ({"type": "refund"}, "type"),
    ({"ts": True}, "ts"),
    ({"ts": -1}, "ts"),
    ({"ts": "yesterday"}, "ts"),
    ({"ts": "2024-06-01T12:00:00"}, "ts"),  # no timezone: ambiguous
    ({"ts": "2024-06-01"}, "ts"),
    ({"ts": "1969-12-31T23:59:59Z"}, "ts"),  # before the epoch, as ISO too
    ({"ts": 1e300}, "ts"),  # beyond any date (and beyond 64-bit state encoding)
    ({"ts": 18_446_744_073_709_551_615}, "ts"),
    ({"ts": [TS]}, "ts"),
    ({"attrs": {"n": 1}}, "attrs"),
    ({"attrs": ["a"]}, "attrs"),
    ({"session_id": 5}, "session_id"),
    ({"event_id": ""}, "event_id"),
    ({"user_id": "u" * 513}, "user_id"),
    ({"event_id": ...}, "event_id"),
    ({"user_id": ...}, "user_id"),
    ({"type": ...}, "type"),
    ({"item_id": ...}, "item_id"),
    ({"ts": ...}, "ts"),
])
def test_invalid_fields_are_schema_errors_that_name_the_field(
        changes: dict[str, Any], field: str) -> None:
    key = b"u" * 513 if changes.get("user_id") == "u" * 513 else b"u1"
    bad = poison(orjson.dumps(valid(**changes)), key=key)
    assert bad.kind == "schema"
    assert field in bad.message


def test_a_purchase_whose_spend_overflows_is_rejected() -> None:
    # price * quantity = inf would be stored as null and break the user's state for good
    bad = poison(orjson.dumps(valid(type="purchase", price=1e308, quantity=10)))
    assert bad.kind == "schema" and "price" in bad.message
    assert decode(valid(type="purchase", price=1e6, quantity=1000)).quantity == 1000


@pytest.mark.parametrize("value", [[1, 2], "event", 3, None, True])
def test_json_that_is_not_an_object_is_a_schema_error(value: Any) -> None:
    bad = poison(orjson.dumps(value))
    assert bad.kind == "schema" and "expected an object" in bad.message


# --- other kinds of poison -----------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"{", b"not json", b"\xff\xfe{}", b'{"a": NaN}', b"1e400",
                                 b'{"event_id": "\\ud800"}'])
def test_not_json(raw: bytes) -> None:
    assert poison(raw).kind == "not_json"


@pytest.mark.parametrize("raw", [None, b""])
def test_a_tombstone_or_zero_length_value_is_empty(raw: bytes | None) -> None:
    assert poison(raw).kind == "empty"


def test_oversized_is_checked_before_parsing() -> None:
    body = orjson.dumps(valid(attrs={"pad": "x" * 500}))
    assert decode_event(body, b"u1", len(body)).attrs is not None  # exactly the limit is fine
    bad = poison(body, max_bytes=len(body) - 1)
    assert bad.kind == "oversized" and str(len(body)) in bad.message
    assert poison(b"{" * 300, max_bytes=256).kind == "oversized"


@pytest.mark.parametrize("key", [b"u2", b"", b"U1", b"\xff\xfe"])
def test_a_key_that_is_not_the_user_id_is_a_key_mismatch(key: bytes) -> None:
    bad = poison(orjson.dumps(valid()), key=key)
    assert bad.kind == "key_mismatch" and "u1" in bad.message


def test_the_worker_sends_an_unkeyed_event_to_the_dlq() -> None:
    raw = orjson.dumps(valid())
    assert decode_event(raw, None, MAX).user_id == "u1"  # a plain decode takes it
    with pytest.raises(PoisonMessage) as exc:
        decode_event(raw, None, MAX, require_key=True)  # as stream.worker.steps.decode
    assert exc.value.kind == "key_mismatch" and "no key" in exc.value.message
    assert decode_event(raw, b"u1", MAX, require_key=True).user_id == "u1"


def test_a_non_ascii_user_id_matches_its_utf8_key() -> None:
    assert decode(valid(user_id="usér-ß"), key="usér-ß".encode()).user_id == "usér-ß"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=30)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=3),
    max_leaves=6,
)
event_like = st.fixed_dictionaries(
    {}, optional={k: json_values | st.just(v) for k, v in {
        "event_id": "e1", "user_id": "u1", "type": "purchase", "item_id": "i1", "ts": TS,
        "price": 2.5, "quantity": 2, "attrs": {"a": "b"}, "session_id": "s"}.items()})


@settings(max_examples=150, deadline=None)
@given(raw=st.binary(max_size=64) | event_like.map(orjson.dumps))
def test_any_bytes_decode_to_an_event_or_a_poison_message(raw: bytes) -> None:
    try:
        ev = decode_event(raw, None, MAX)
    except PoisonMessage as bad:
        assert bad.kind in {"not_json", "schema", "oversized", "key_mismatch", "empty"}
        assert bad.message and "\n" not in bad.message
    else:
        assert isinstance(ev, Event) and ev.ts >= 0
        assert ev.price is None or ev.price >= 0
        assert ev.quantity is None or ev.quantity >= 1
        assert orjson.dumps(ev.ts)  # state can store it


# --- records and JSON Schema export -----------------------------------------------------

def test_dlq_record_keeps_the_original_bytes() -> None:
    raw = b"\x00\xffnot json"
    rec = DlqRecord(error="value is not JSON", error_kind="not_json",
                    raw=base64.b64encode(raw).decode(), topic="events", partition=3, offset=42,
                    received_at=TS)
    again = DlqRecord.model_validate_json(rec.model_dump_json())
    assert again.raw_bytes() == raw and again == rec


def test_export_json_schemas_writes_one_valid_schema_per_record(tmp_path: Path) -> None:
    paths = export_json_schemas(tmp_path / "out")
    assert sorted(p.name for p in paths) == sorted(f"{n}.schema.json" for n in WIRE_RECORDS)
    for path in paths:
        schema = json.loads(path.read_text())
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(schema)


def test_the_exported_event_schema_agrees_with_decode_event(tmp_path: Path) -> None:
    export_json_schemas(tmp_path)
    schema = json.loads((tmp_path / "event.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for good in (valid(), valid(ts="2024-06-01T12:00:00Z"),
                 valid(type="purchase", price=1.5, quantity=2, attrs={"a": "b"})):
        decode(good)
        assert not list(validator.iter_errors(good)), good
    for bad in (valid(type="refund"), valid(price=-1), valid(user_id=1), valid(quantity=0),
                valid(ts=...), valid(attrs={"n": 1})):
        with pytest.raises(PoisonMessage):
            decode(bad)
        assert list(validator.iter_errors(bad)), bad
