"""Hostile bytes at the worker's edge: decode_event yields an Event or a PoisonMessage whose
DLQ record carries the original bytes, whatever the input (issue 18)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.errors import PoisonMessage
from stream.records import dlq_record
from stream.schemas import MAX_PRICE, MAX_TS_MS, DlqRecord, Event, decode_event
from stream.settings import Settings

MAX = Settings.model_fields["max_event_bytes"].default  # 64 KiB, the worker's default limit
TS = 1_717_243_200_000
KINDS = {"empty", "oversized", "not_json", "schema", "key_mismatch"}
BASE: dict[str, Any] = {"event_id": "e1", "user_id": "u1", "type": "purchase", "item_id": "i1",
                        "ts": TS, "price": 2.5, "quantity": 2}
STRING_FIELDS = ("event_id", "user_id", "item_id", "category", "session_id", "device_id", "ip")
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(raw: bytes | None, key: bytes | None, max_bytes: int = MAX) -> Event | PoisonMessage:
    """decode_event's answer; anything but an Event or a PoisonMessage fails the test (the
    worker's ingest loop catches PoisonMessage only: any other error would stop the agent).
    A PoisonMessage must make a DLQ record that gives back the exact bytes and key."""
    try:
        ev = decode_event(raw, key, max_bytes)
    except PoisonMessage as bad:
        assert bad.kind in KINDS and bad.message
        rec = DlqRecord.model_validate_json(
            dlq_record(bad, raw, key, "t.events", 3, 42, TS))
        assert rec.raw_bytes() == (raw or b"")
        assert (None if rec.key is None else base64.b64decode(rec.key)) == key
        assert (rec.error_kind, rec.error, rec.offset) == (bad.kind, bad.message, 42)
        return bad
    assert isinstance(ev, Event)
    assert 0 <= ev.ts <= MAX_TS_MS
    assert ev.price is None or 0 <= ev.price <= MAX_PRICE
    assert ev.quantity is None or ev.quantity >= 1
    assert orjson.loads(orjson.dumps(ev.model_dump())) is not None  # state can store it
    return ev


def splice(field: str, json_text: bytes, base: dict[str, Any] = BASE) -> bytes:
    """A valid event whose `field` holds `json_text` as written (not re-encoded)."""
    return orjson.dumps({**base, field: "\x00HOLE\x00"}).replace(b'"\\u0000HOLE\\u0000"',
                                                                 json_text)


def nested(depth: int, kind: str, closed: bool) -> bytes:
    opening, leaf, closing = ("[", "1", "]") if kind == "array" else ('{"a":', "1", "}")
    return (opening * depth + leaf + (closing * depth if closed else "")).encode()


# --- deep nesting, huge numbers, NaN/Infinity, invalid UTF-8 -----------------------------

@FUZZ
@given(depth=st.integers(1, 1200), kind=st.sampled_from(["array", "object"]),
       closed=st.booleans(), where=st.sampled_from(["top", "ts", "attrs", "extra"]))
def test_deep_nesting(depth: int, kind: str, closed: bool, where: str) -> None:
    inner = nested(depth, kind, closed)
    raw = inner if where == "top" else splice(where, inner)
    got = outcome(raw, b"u1")
    if where == "extra" and closed and depth < 1000:
        assert isinstance(got, Event)  # unknown fields are ignored however deep
    elif where != "extra" or not closed:
        assert isinstance(got, PoisonMessage) and got.kind in {"not_json", "schema"}


numbers = st.one_of(
    st.integers(-(10**400), 10**400).map(str),
    st.from_regex(r"-?[0-9]{1,330}(\.[0-9]{1,40})?([eE][+-]?[0-9]{1,6})?", fullmatch=True),
    st.sampled_from(["NaN", "-NaN", "Infinity", "-Infinity", "inf", "nan", "1e309", "-1e309",
                     "1e-400", "0e99999", "-0", "-0.0", "1E+308", "4.9e-324",
                     "18446744073709551616", "9223372036854775808", "-9223372036854775809",
                     "253402300799999.9", "1e15", "1.0000000000000002e15", "0x10", "01", "+1",
                     ".5", "1."]),
)


@FUZZ
@given(text=numbers, field=st.sampled_from(["ts", "price", "quantity", "extra", "attrs"]))
def test_huge_numbers_nan_and_infinity(text: str, field: str) -> None:
    got = outcome(splice(field, text.encode()), b"u1")
    if text.lstrip("-").lower() in ("nan", "infinity", "inf", "1e309"):
        assert isinstance(got, PoisonMessage) and got.kind == "not_json"


bad_utf8 = st.one_of(
    st.sampled_from([b"\xff", b"\xfe", b"\x80", b"\xc0\xaf", b"\xc3\x28", b"\xe2\x82",
                     b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80"]),
    st.binary(min_size=1, max_size=6).filter(lambda b: not _is_utf8(b)),
)


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@FUZZ
@given(bad=bad_utf8, field=st.sampled_from(STRING_FIELDS), escaped=st.booleans())
def test_invalid_utf8_and_lone_surrogates(bad: bytes, field: str, escaped: bool) -> None:
    text = b'"\\ud800 x"' if escaped else b'"x' + bad + b'y"'
    got = outcome(splice(field, text), b"u1")
    assert isinstance(got, PoisonMessage) and got.kind == "not_json"


@FUZZ
@given(bad=bad_utf8)
def test_a_key_that_is_not_utf8_is_a_key_mismatch_kept_in_the_dlq(bad: bytes) -> None:
    got = outcome(orjson.dumps(BASE), b"u1" + bad)
    assert isinstance(got, PoisonMessage) and got.kind == "key_mismatch"


iso_like = st.from_regex(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}(:[0-9]{2}(:[0-9]{2}([.,][0-9]{1,9})?)?)?)?"
    r"(Z|[+-][0-9]{2}(:?[0-9]{2}(:?[0-9]{2}([.][0-9]{1,6})?)?)?)?", fullmatch=True)


@FUZZ
@given(ts=iso_like | st.text(max_size=40))
def test_timestamps_of_any_text(ts: str) -> None:
    """ISO-8601 parsing at the year 1 and 9999 edges, with any offset, or no date at all."""
    got = outcome(splice("ts", orjson.dumps(ts)), b"u1")
    assert isinstance(got, Event) or got.kind == "schema"


# --- sizes at the limit, random bytes, valid events with random extra fields -------------

@FUZZ
@given(limit=st.sampled_from([256, 4096, MAX]), offset=st.integers(-3, 3),
       pad=st.sampled_from(["x", "é", "€", "😀"]))
def test_sizes_at_the_limit_count_bytes(limit: int, offset: int, pad: str) -> None:
    bare = len(orjson.dumps({**BASE, "attrs": {"p": ""}}))
    width = len(pad.encode())
    n = max(0, (limit + offset - bare) // width)
    raw = orjson.dumps({**BASE, "attrs": {"p": pad * n}})
    got = outcome(raw, b"u1", limit)
    if len(raw) <= limit:
        assert isinstance(got, Event) and got.attrs == {"p": pad * n}
    else:
        assert isinstance(got, PoisonMessage) and got.kind == "oversized"


@FUZZ
@given(raw=st.binary(max_size=4096), key=st.none() | st.binary(max_size=16))
def test_random_bytes(raw: bytes, key: bytes | None) -> None:
    outcome(raw, key)


@FUZZ
@given(prefix=st.binary(max_size=8), suffix=st.binary(max_size=8), cut=st.integers(0, 200))
def test_valid_events_cut_or_wrapped_in_junk(prefix: bytes, suffix: bytes, cut: int) -> None:
    raw = orjson.dumps({**BASE, "category": "c", "attrs": {"a": "b"}})
    outcome(prefix + raw[:len(raw) - cut] + suffix, b"u1")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12,
)
ids = st.text(min_size=1, max_size=40) | st.text(min_size=500, max_size=512)
valid_events = st.fixed_dictionaries(
    {"event_id": ids, "user_id": ids, "item_id": ids,
     "type": st.sampled_from(["view", "click", "add_to_cart", "purchase"]),
     "ts": st.integers(0, MAX_TS_MS)},
    optional={"category": st.text(max_size=30), "session_id": st.text(max_size=30),
              "device_id": st.text(max_size=30), "ip": st.text(max_size=30),
              "price": st.floats(0, MAX_PRICE), "quantity": st.integers(1, 2**63 - 1),
              "attrs": st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4)})
extra_fields = st.dictionaries(
    st.text(max_size=20).filter(lambda k: k not in Event.model_fields), json_values,
    min_size=1, max_size=6)


@FUZZ
@given(event=valid_events, extra=extra_fields, keyed=st.booleans())
def test_valid_events_with_random_extra_fields_decode_as_without(
        event: dict[str, Any], extra: dict[str, Any], keyed: bool) -> None:
    key = event["user_id"].encode() if keyed else None
    plain = outcome(orjson.dumps(event), key)
    assert isinstance(plain, Event)
    assert outcome(orjson.dumps({**extra, **event}), key) == plain
    assert outcome(orjson.dumps({**event, **extra}), key) == plain


# --- what the fuzz found ------------------------------------------------------------------

@pytest.mark.parametrize("attr_key", ["a\nb", "\x1b[31mred\x1b[0m\r\n", "k" * 60_000])
def test_a_schema_error_is_one_short_line_whatever_the_attrs_keys(attr_key: str) -> None:
    got = outcome(orjson.dumps({**BASE, "attrs": {attr_key: 1}}), b"u1")
    assert isinstance(got, PoisonMessage) and got.kind == "schema"
    assert got.message.isprintable(), got.message[:200]  # one line, no control characters
    assert len(got.message) <= 1000, len(got.message)
