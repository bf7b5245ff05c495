"""The SDK without a broker: event encoding, headers, settings from a bare string, group
timing, typed records with their metadata, commit and seek bookkeeping."""

from __future__ import annotations

import logging

import orjson
import pytest

from stream.client import ConsumerRecord, as_settings
from stream.client import config as client_config
from stream.client.codec import (
    decode_record,
    encode_event,
    encode_headers,
    normalise_ids,
    pick_types,
)
from stream.client.offsets import HandedOut, Partition, seek_target
from stream.errors import ClientError
from stream.kafka.broker import EMBEDDED_CLUSTER_ID
from stream.schemas import Feedback, RecItem, Recommendation, RiskAlert, RiskFeedback
from stream.settings import Settings
from stream.topics import topics_for

EVENT = {"event_id": "e1", "user_id": "u1", "type": "view", "item_id": "i1", "ts": 1}


def test_numeric_ids_become_decimal_strings_and_key_the_record() -> None:
    assert normalise_ids({"user_id": 42, "item_id": 7, "ts": 3}) == {
        "user_id": "42", "item_id": "7", "ts": 3}
    assert normalise_ids({"user_id": True, "item_id": 1.5}) == {"user_id": True,
                                                                  "item_id": 1.5}
    value, key = encode_event({**EVENT, "user_id": 42, "item_id": 7}, validate=True,
                              max_event_bytes=1000)
    assert key == b"42" and orjson.loads(value)["item_id"] == "7"
    value, key = encode_event({**EVENT, "user_id": 9, "extra": 1}, validate=False,
                              max_event_bytes=10)
    assert key == b"9" and orjson.loads(value)["extra"] == 1  # as given, but normalised
    with pytest.raises(ClientError, match="user_id: Input should be a valid string"):
        encode_event({**EVENT, "user_id": True}, validate=True, max_event_bytes=1000)
    with pytest.raises(ClientError, match="the limit is 50"):
        encode_event(EVENT, validate=True, max_event_bytes=50)


def test_headers_are_str_bytes_pairs_from_a_mapping_or_pairs() -> None:
    assert encode_headers(None) is None
    assert encode_headers({"a": "x", "b": b"\x00"}) == [("a", b"x"), ("b", b"\x00")]
    assert encode_headers([("a", b"1"), ("a", "2")]) == [("a", b"1"), ("a", b"2")]
    for bad in ([("a", 1)], [(1, b"x")], ["ab"]):
        with pytest.raises(ClientError, match="headers are"):
            encode_headers(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name,value", [
    ("LAMSTREAM_SECURITY_PROTOCOL", "SASL_SSL"), ("LAMSTREAM_SASL_USERNAME", "me"),
    ("LAMSTREAM_SSL_CAFILE", "/ca.pem"), ("LAMSTREAM_TOPIC_PREFIX", "prod."),
    ("lamstream_security_protocol", "SSL")])
def test_a_bare_bootstrap_refuses_security_it_would_ignore(
        monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ClientError, match=f"(?i)ignores {name}.*from_env"):
        as_settings("k1:9092")
    given = Settings.model_construct(bootstrap_servers="k1:9092")
    assert as_settings(given) is given


def test_a_bare_bootstrap_is_plaintext_without_a_prefix(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setenv("LAMSTREAM_SECURITY_PROTOCOL", "plaintext")
    monkeypatch.setenv("LAMSTREAM_TOPIC_PREFIX", "")
    s = as_settings(" k1:9092,k2:9092 ")
    assert s.bootstrap_servers == "k1:9092,k2:9092" and s.topic_prefix == ""
    with pytest.raises(ClientError, match="expected Settings or a bootstrap string"):
        as_settings("  ")


def test_max_poll_interval_is_kafkas_unless_set_and_short_only_on_the_embedded_broker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(bootstrap_servers="k1:9092")
    cluster = {"id": "prod-cluster-1"}
    monkeypatch.setattr(client_config, "cluster_id", lambda _settings: cluster["id"])
    assert client_config.max_poll_interval_ms(s, None) == 300_000
    assert client_config.max_poll_interval_ms(s, 1234) == 1234
    cluster["id"] = EMBEDDED_CLUSTER_ID
    assert client_config.max_poll_interval_ms(s, None) == 10_000
    assert client_config.max_poll_interval_ms(s, 600_000) == 600_000
    with pytest.raises(ClientError, match="must be positive"):
        client_config.max_poll_interval_ms(s, 0)
    cfg = client_config.group_config(s, "g", from_beginning=True, max_poll_interval=None)
    assert cfg["enable_auto_commit"] is False and cfg["auto_offset_reset"] == "earliest"


def test_subscribers_read_outputs_and_feedback_but_not_decisions() -> None:
    s = Settings(bootstrap_servers="k:1", topic_prefix="p.")
    t = topics_for(s)
    assert pick_types(s, None) == {"p.recommendations": Recommendation,
                                   "p.risk-alerts": RiskAlert}
    assert pick_types(s, [t.feedback.name, t.risk_feedback.name]) == {
        t.feedback.name: Feedback, t.risk_feedback.name: RiskFeedback}
    with pytest.raises(ClientError, match="not p.decisions"):
        pick_types(s, [t.decisions.name])


def test_records_carry_their_metadata_and_garbage_is_skipped(
        caplog: pytest.LogCaptureFixture) -> None:
    rec = Recommendation(rec_id="r1", user_id="u1", event_id="e1",
                         items=[RecItem(item_id="i", score=1.0, propensity=1.0)],
                         model="m", model_version="v", ts=2, event_ts=1, latency_ms=0.5)
    types = {"recs": Recommendation}
    got = decode_record(types, "recs", 3, 17, 1000, b"u1", rec.model_dump_json().encode(),
                        [("trace", b"t1")])
    assert got == ConsumerRecord(topic="recs", partition=3, offset=17, timestamp=1000,
                                 key="u1", value=rec, headers=[("trace", b"t1")])
    with caplog.at_level(logging.WARNING, logger="stream.client"):
        assert decode_record(types, "recs", 0, 5, 0, None, b"{broken", None) is None
        assert decode_record(types, "recs", 0, 6, 0, None, None, None) is None
    assert "recs[0]@5" in caplog.text and "record has no value" in caplog.text


def test_commit_covers_what_was_handed_out_and_seek_checks_its_target() -> None:
    marks = HandedOut()
    marks.mark("t", 0, 4)
    marks.mark("t", 1, 9)
    marks.mark("t", 0, 5)
    assert marks.to_commit(None) == {Partition("t", 0): 6, Partition("t", 1): 10}
    one = ConsumerRecord("t", 1, 7, 0, None, Feedback.model_construct())
    assert marks.to_commit(one) == {Partition("t", 1): 8}
    marks.committed({Partition("t", 1): 8})  # 9 was handed out: still to commit
    assert marks.next == {Partition("t", 0): 6, Partition("t", 1): 10}
    marks.committed(marks.to_commit(None))
    assert marks.next == {}
    marks.mark("t", 2, 1)
    marks.forget(Partition("t", 2))
    assert marks.next == {}

    assigned = {Partition("a", 0), Partition("b", 1)}
    assert seek_target(["a"], 0, None, 3, assigned) == Partition("a", 0)
    assert seek_target(["a", "b"], ("b", 1), None, 0, assigned) == Partition("b", 1)
    with pytest.raises(ClientError, match="needs the topic"):
        seek_target(["a", "b"], 0, None, 3, assigned)
    with pytest.raises(ClientError, match=r"a\[5\] is not assigned"):
        seek_target(["a"], 5, None, 3, assigned)
    with pytest.raises(ClientError, match="offset must be >= 0"):
        seek_target(["a"], 0, None, -1, assigned)
