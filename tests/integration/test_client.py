"""The SDK against a real broker: validated producing, typed subscribing, topics, lag, stop."""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.client import EventProducer, PredictionSubscriber, Value, tail
from stream.errors import BrokerError, ClientError
from stream.kafka.admin import consumer_lag, end_offsets, ensure_topics, list_topics
from stream.kafka.broker import EmbeddedBroker, free_port, wait_ready
from stream.schemas import DlqRecord, Event, RecItem, Recommendation, RiskAlert, RiskReason
from stream.settings import Settings
from stream.topics import topics_for
from tests.helpers import make_settings, poll_until

pytestmark = pytest.mark.integration

SettingsFactory = Callable[..., Settings]


def event(n: int, user: str = "u1", **extra: Any) -> dict[str, Any]:
    return {"event_id": f"e{n}", "user_id": user, "type": "view", "item_id": f"i{n}",
            "ts": 1_700_000_000_000 + n, **extra}


def recommendation(n: int, user: str = "u1") -> Recommendation:
    return Recommendation(
        rec_id=f"r{n}", user_id=user, event_id=f"e{n}",
        items=[RecItem(item_id="i9", score=0.9, propensity=0.5)], model="baseline",
        model_version="v1", ts=1_700_000_000_000 + n, event_ts=1_700_000_000_000,
        latency_ms=3.5)


def alert(n: int, user: str = "u1") -> RiskAlert:
    return RiskAlert(
        alert_id=f"a{n}", user_id=user, event_id=f"e{n}", score=0.93, threshold=0.8,
        reasons=[RiskReason(feature="spend_1h_z", value=4.2, contribution=0.6)],
        model_version="rules-1", ts=1_700_000_000_000 + n, event_ts=1_700_000_000_000,
        latency_ms=2.0)


def wire(record: Recommendation | RiskAlert | DlqRecord) -> bytes:
    return orjson.dumps(record.model_dump(mode="json"))


def read_all(settings: Settings, topic: str, expected: int) -> list[tuple[str | None, Any]]:
    """Everything on a topic; waits up to 15 s for `expected` records."""
    got: list[tuple[str | None, Any]] = []
    deadline = time.monotonic() + 15
    while len(got) < expected and time.monotonic() < deadline:
        got = list(tail(settings, topic, from_beginning=True, timeout=0.5))
    return got


def collect(sub: PredictionSubscriber, n: int, timeout: float = 15.0) -> list[Value]:
    """Poll until at least n predictions arrived (AssertionError after timeout)."""
    got: list[Value] = []

    def enough() -> bool:
        got.extend(r.value for r in sub.poll(0.2))
        return len(got) >= n

    poll_until(enough, timeout, message=f"{n} predictions")
    return got


@pytest.fixture
def settings(settings_factory: SettingsFactory) -> Settings:
    s = settings_factory()
    ensure_topics(s)
    return s


def test_invalid_events_raise_clear_errors_and_send_nothing(settings: Settings) -> None:
    with EventProducer(settings) as producer:
        with pytest.raises(ClientError, match=r"invalid event 'e1': price: .*greater than or "
                                              r"equal to 0"):
            producer.send(event(1, price=-1.0))
        with pytest.raises(ClientError, match="type: Input should be 'view'"):
            producer.send(event(2, type="teleport"))
        with pytest.raises(ClientError, match="user_id: Field required"):
            producer.send({k: v for k, v in event(3).items() if k != "user_id"})
        with pytest.raises(ClientError, match="user_id: Input should be a valid string"):
            producer.send(event(4, user=True))  # type: ignore[arg-type]
        with pytest.raises(ClientError, match="takes an Event or a dict"):
            producer.send("e5")  # type: ignore[arg-type]
        with EventProducer(settings, max_event_bytes=300) as small, \
                pytest.raises(ClientError, match="the limit is 300"):
            small.send(event(6, attrs={"blob": "x" * 400}))
        producer.send(event(7)).get(timeout=10)
    records = read_all(settings, topics_for(settings).events.name, 1)
    assert [v["event_id"] for _, v in records] == ["e7"]


def test_events_round_trip_keyed_by_user_in_one_partition_each(settings: Settings) -> None:
    users = [f"user-{n}" for n in range(8)]
    sent: list[dict[str, Any]] = []
    partitions: dict[str, set[int]] = {u: set() for u in users}
    with EventProducer(settings) as producer:
        futures = []
        for n in range(80):
            e = event(n, user=users[n % 8])
            if n == 5:  # an ISO-8601 ts and an Event object are normalised on the way out
                e["ts"] = "2024-01-01T00:00:00+00:00"
            sent.append(e)
            futures.append((e["user_id"], producer.send(Event.model_validate(e) if n == 6
                                                        else e)))
        producer.flush(timeout=10)
        for user, fut in futures:
            partitions[user].add(fut.get(timeout=1).partition)
        assert producer.sent == 80 and producer.failed == 0
    assert all(len(p) == 1 for p in partitions.values())
    records = read_all(settings, topics_for(settings).events.name, 80)
    by_id = {v["event_id"]: (k, v) for k, v in records}
    assert len(records) == 80 and len(by_id) == 80
    for e in sent:
        key, value = by_id[e["event_id"]]
        assert key == e["user_id"]
        assert value == Event.model_validate(e).model_dump(mode="json", exclude_none=True)
    assert by_id["e5"][1]["ts"] == 1704067200000


def test_send_raw_and_validate_false_pass_input_through(settings: Settings) -> None:
    with EventProducer(settings, validate=False) as producer:
        producer.send_raw(b"\xffnot json", b"u1")
        producer.send(event(1, price=-5.0))  # invalid, but sent: the worker must DLQ it
    records = read_all(settings, topics_for(settings).events.name, 2)
    assert len(list(tail(settings, topics_for(settings).events.name, from_beginning=True,
                         max_records=1))) == 1
    assert sorted(records, key=str) == sorted(
        [("u1", "\ufffdnot json"), ("u1", event(1, price=-5.0))], key=str)


def test_subscriber_from_beginning_yields_typed_records_and_skips_garbage(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    t = topics_for(settings)
    dlq = DlqRecord(error="value is not JSON", error_kind="not_json", raw="eA==", key=None,
                    topic=t.events.name, partition=0, offset=3, received_at=1)
    with EventProducer(settings, validate=False) as producer:
        producer.send_raw(wire(recommendation(1)), b"u1", topic=t.recommendations.name)
        producer.send_raw(b"{broken", b"u1", topic=t.recommendations.name)
        producer.send_raw(orjson.dumps({"alert_id": "a0"}), b"u1", topic=t.risk_alerts.name)
        producer.send_raw(None, b"u1", topic=t.risk_alerts.name)
        producer.send_raw(wire(alert(2)), b"u1", topic=t.risk_alerts.name)
        producer.send_raw(wire(dlq), None, topic=t.dlq.name)
    with caplog.at_level(logging.WARNING, logger="stream.client"), PredictionSubscriber(
            settings, topics=[t.recommendations.name, t.risk_alerts.name, t.dlq.name],
            from_beginning=True) as sub:
        got = collect(sub, 3)
        assert sub.skipped == 3
    assert sorted(got, key=lambda r: type(r).__name__) == [dlq, recommendation(1), alert(2)]
    assert [type(r) for r in sorted(got, key=lambda r: type(r).__name__)] == [
        DlqRecord, Recommendation, RiskAlert]
    assert caplog.text.count("skipping unreadable record") == 3


def test_subscriber_from_end_sees_only_records_written_after_it_started(
        settings: Settings) -> None:
    topic = topics_for(settings).recommendations.name
    # one big batch per partition: the tail of a batch is where tansu under-reports "latest"
    with EventProducer(settings, validate=False, linger_ms=200) as producer:
        for n in range(200):
            producer.send_raw(wire(recommendation(n, user=f"u{n % 4}")), f"u{n % 4}".encode(),
                              topic=topic)
    with PredictionSubscriber(settings, topics=[topic]) as sub:
        with EventProducer(settings, validate=False) as producer:
            for n in range(1000, 1010):
                producer.send_raw(wire(recommendation(n)), b"u1", topic=topic)
        got = collect(sub, 10)
        got.extend(r.value for r in sub.poll(0.5))  # and nothing more
    assert sorted(r.rec_id for r in got if isinstance(r, Recommendation)) == [
        f"r{n}" for n in range(1000, 1010)]
    assert len(got) == 10


def test_group_subscriber_commits_what_it_yielded_and_resumes(settings: Settings) -> None:
    topic = topics_for(settings).risk_alerts.name
    group = f"g-{uuid.uuid4().hex[:8]}"

    def produce(ns: range) -> None:
        with EventProducer(settings, validate=False, linger_ms=50) as producer:
            for n in ns:
                producer.send_raw(wire(alert(n, user=f"u{n % 3}")), f"u{n % 3}".encode(),
                                  topic=topic)

    produce(range(12))
    seen: list[str] = []
    with PredictionSubscriber(settings, topics=[topic], group_id=group,
                              from_beginning=True) as sub:
        for rec in sub:
            assert isinstance(rec.value, RiskAlert)
            seen.append(rec.value.alert_id)
            if len(seen) == 12:
                break
    assert sorted(seen) == sorted(f"a{n}" for n in range(12))
    assert consumer_lag(settings, group, topic) == {p: 0 for p in range(settings.partitions)}

    produce(range(100, 105))
    # exact even though the 5 records sit in few batches (tansu's "latest" lags a batch)
    assert sum(consumer_lag(settings, group, topic).values()) == 5
    # 40 s: a join of the group on tansu took 3 to 20+ s on the loaded 2-core machine (the
    # same before and after the SDK moved to ConsumerRecords), 20 s failed now and then
    with PredictionSubscriber(settings, topics=[topic], group_id=group) as sub:
        again = collect(sub, 5, timeout=40)
    assert sorted(r.alert_id for r in again if isinstance(r, RiskAlert)) == [
        f"a{n}" for n in range(100, 105)]


def test_end_offsets_are_exact_after_batched_writes(settings_factory: SettingsFactory
                                                    ) -> None:
    settings = settings_factory(partitions=1)
    ensure_topics(settings)
    topic = topics_for(settings).events.name
    with EventProducer(settings, validate=False, linger_ms=100) as producer:
        for n in range(50):
            producer.send(event(n))
    assert end_offsets(settings, topic) == {0: 50}
    never_committed = consumer_lag(settings, f"nobody-{uuid.uuid4().hex[:6]}", topic)
    assert never_committed == {0: 50}


def test_ensure_topics_is_idempotent_and_reports_too_few_partitions(
        settings_factory: SettingsFactory, caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_factory()
    spec = topics_for(settings)
    created = ensure_topics(settings)
    assert sorted(created) == sorted(s.name for s in spec.all())
    on_cluster = list_topics(settings)
    assert {s.name: on_cluster[s.name] for s in spec.all()} == {
        s.name: s.partitions for s in spec.all()}
    assert on_cluster[spec.events.name] == 4 and on_cluster[spec.model_updates.name] == 1
    assert ensure_topics(settings) == []
    wider = settings.model_copy(update={"partitions": 6})
    with caplog.at_level(logging.WARNING, logger="stream.kafka.admin"):
        assert ensure_topics(wider) == []
    assert f"topic {spec.events.name} has 4 partitions, settings want 6" in caplog.text
    assert list_topics(settings)[spec.events.name] == 4


def test_subscriber_on_a_missing_topic_fails_clearly(settings_factory: SettingsFactory
                                                     ) -> None:
    settings = settings_factory()
    with pytest.raises(ClientError, match="does not exist"):
        PredictionSubscriber(settings, metadata_timeout=1.0)
    with pytest.raises(ClientError, match="reads .*recommendations"):
        PredictionSubscriber(settings, topics=[topics_for(settings).events.name])


def test_embedded_broker_starts_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    broker = EmbeddedBroker(port=port)
    with broker:
        pid = broker.pid
        assert pid is not None and broker.running
        log_dir = broker.log_path.parent if broker.log_path else None
        with pytest.raises(BrokerError, match=f"port {port} on 127.0.0.1 is already in use"):
            EmbeddedBroker(port=port).start()
        s = make_settings(broker.bootstrap, "own.", tmp_path, partitions=2)
        assert len(ensure_topics(s)) == len(topics_for(s).all())
        with EventProducer(s) as producer:
            producer.send(event(1)).get(timeout=10)
    assert not broker.running and broker.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert log_dir is not None and not log_dir.exists()  # its temp dir is cleaned up
    with socket.socket() as sock:  # the port is free again
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    broker.stop()  # idempotent


def test_wait_ready_answers_for_any_broker_and_times_out_clearly(bootstrap: str) -> None:
    wait_ready(bootstrap, timeout=10)
    nobody = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(BrokerError, match=f"no broker at {nobody} after 0.5s"):
        wait_ready(nobody, timeout=0.5)
    assert time.monotonic() - started < 5


def test_embedded_broker_that_dies_reports_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'error: storage engine exploded' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerError, match=r"exited with code 3(.|\n)*storage engine exploded"):
        EmbeddedBroker(port=free_port(), binary=str(fake), log_dir=tmp_path).start()
