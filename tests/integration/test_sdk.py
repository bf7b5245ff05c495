"""The SDK's Kafka habits against a real broker: send options, record metadata, manual commit,
seek, resume after a restart, for the kafka-python clients and the asyncio ones alike."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka.partitioner.default import murmur2

from stream.client import (
    AsyncEventProducer,
    AsyncPredictionSubscriber,
    ConsumerRecord,
    EventProducer,
    PredictionSubscriber,
)
from stream.client.config import (
    EMBEDDED_MAX_POLL_INTERVAL_MS,
    KAFKA_MAX_POLL_INTERVAL_MS,
)
from stream.devtools.procs import start_worker, stop_worker, wait_healthy
from stream.kafka.admin import cluster_id, consumer_lag, ensure_topics
from stream.kafka.broker import EMBEDDED_CLUSTER_ID
from stream.kafka.consumers import assign_all, kafka_consumer
from stream.schemas import Feedback, RecItem, Recommendation, ShownItem
from stream.settings import Settings
from stream.topics import topics_for
from tests.helpers import poll_until

pytestmark = pytest.mark.integration

T0 = 1_764_000_000_000


def event(n: int, user: str | int = "u1", type_: str = "view") -> dict[str, Any]:
    return {"event_id": f"e{n}", "user_id": user, "type": type_, "item_id": f"i{n % 7}",
            "ts": T0 + n}


def recommendation(n: int, user: str) -> Recommendation:
    return Recommendation(
        rec_id=f"r{n}", user_id=user, event_id=f"e{n}",
        items=[RecItem(item_id="i9", score=0.9, propensity=0.5)], model="baseline",
        model_version="v1", ts=T0 + n, event_ts=T0, latency_ms=1.0)


def partition_of(user: str, partitions: int) -> int:
    """kafka-python's (and aiokafka's and the Java client's) default partitioner."""
    return (murmur2(user.encode()) & 0x7FFFFFFF) % partitions


@pytest.fixture
def settings(settings_factory: Callable[..., Settings]) -> Settings:
    s = settings_factory()
    ensure_topics(s)
    return s


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The LAMSTREAM_* environment a worker of `settings` reads, for the from_env() clients."""
    for name, value in {"BOOTSTRAP_SERVERS": settings.bootstrap,
                        "TOPIC_PREFIX": settings.topic_prefix,
                        "PARTITIONS": str(settings.partitions)}.items():
        monkeypatch.setenv(f"LAMSTREAM_{name}", value)
    return settings


def read_events(settings: Settings, n: int) -> list[Any]:
    """The first n raw records of the events topic (kafka-python ConsumerRecords)."""
    consumer = kafka_consumer(settings, "test-read", enable_auto_commit=False)
    got: list[Any] = []
    try:
        assign_all(consumer, [topics_for(settings).events.name], True, 10)

        def enough() -> bool:
            for records in consumer.poll(timeout_ms=200).values():
                got.extend(records)
            return len(got) >= n
        poll_until(enough, 15, message=f"{n} events")
    finally:
        consumer.close()
    return got


def test_send_options_and_numeric_ids_reach_the_wire(env: Settings) -> None:
    delivered: list[tuple[BaseException | None, Any]] = []
    with EventProducer.from_env() as producer:
        first = producer.send(event(1, user=42), headers={"trace-id": "abc"},
                              timestamp_ms=T0 - 5, on_delivery=lambda e, m:
                              delivered.append((e, m)))
        producer.send(event(2, user="u2"), headers=[("h", b"\x00\x01")], partition=3)
        meta = first.get(timeout=10)
    assert delivered == [(None, meta)]
    records = {r.value: r for r in read_events(env, 2)}
    one = orjson.loads(next(v for v in records if b'"e1"' in v))
    assert one["user_id"] == "42" and one["item_id"] == "i1"
    r1 = next(r for v, r in records.items() if b'"e1"' in v)
    assert (r1.key, r1.timestamp, list(r1.headers)) == (b"42", T0 - 5, [("trace-id", b"abc")])
    assert r1.partition == meta.partition == partition_of("42", env.partitions)
    r2 = next(r for v, r in records.items() if b'"e2"' in v)
    assert r2.partition == 3 and list(r2.headers) == [("h", b"\x00\x01")]


def test_async_producer_keys_users_to_the_same_partitions(env: Settings) -> None:
    delivered: list[tuple[BaseException | None, Any]] = []

    async def produce() -> list[Any]:
        async with AsyncEventProducer.from_env() as producer:
            futures = [await producer.send(event(n, user=f"user-{n}"), headers={"n": str(n)},
                                           on_delivery=lambda e, m: delivered.append((e, m)))
                       for n in range(8)]
            return [await f for f in futures]

    metas = asyncio.run(produce())
    assert [m.partition for m in metas] == [partition_of(f"user-{n}", env.partitions)
                                            for n in range(8)]
    assert sorted((e, m.offset, m.partition) for e, m in delivered) == sorted(
        (None, m.offset, m.partition) for m in metas)
    headers = {r.key: list(r.headers) for r in read_events(env, 8)}
    assert headers[b"user-5"] == [("n", b"5")]


def write_recommendations(settings: Settings, ns: range, users: int = 3) -> None:
    topic = topics_for(settings).recommendations.name
    with EventProducer(settings, validate=False) as producer:
        for n in ns:
            user = f"u{n % users}"
            producer.send_raw(recommendation(n, user).model_dump_json().encode(),
                              user.encode(), topic=topic, headers={"n": str(n)})


def expected_interval(settings: Settings) -> int:
    return (EMBEDDED_MAX_POLL_INTERVAL_MS if cluster_id(settings) == EMBEDDED_CLUSTER_ID
            else KAFKA_MAX_POLL_INTERVAL_MS)


def check_records(got: list[ConsumerRecord], settings: Settings) -> None:
    topic = topics_for(settings).recommendations.name
    for r in got:
        assert isinstance(r.value, Recommendation) and r.topic == topic
        n = int(r.value.rec_id[1:])
        assert r.key == r.value.user_id and r.headers == [("n", str(n).encode())]
        assert r.partition == partition_of(r.value.user_id, settings.partitions)
        assert r.offset >= 0 and r.timestamp > T0
    per_partition: dict[int, list[int]] = {}
    for r in got:
        per_partition.setdefault(r.partition, []).append(r.offset)
    assert all(offs == sorted(offs) for offs in per_partition.values())


def drain(sub: PredictionSubscriber, n: int, timeout: float = 40.0,
          keep: type = Recommendation) -> list[ConsumerRecord]:
    """Poll until n records of type `keep` arrived (AssertionError after `timeout`; a group
    join on tansu took 3 to 20+ s on the loaded 2-core machine)."""
    got: list[ConsumerRecord] = []

    def enough() -> bool:
        got.extend(r for r in sub.poll(0.2) if isinstance(r.value, keep))
        return len(got) >= n
    poll_until(enough, timeout, message=f"{n} records")
    return got


def test_manual_commit_and_seek_then_resume_without_loss(settings: Settings) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    topic = topics_for(settings).recommendations.name
    write_recommendations(settings, range(30))
    with PredictionSubscriber(settings, group_id=group, topics=[topic], from_beginning=True,
                              enable_auto_commit=False) as sub:
        assert sub._consumer is not None
        assert sub._consumer.config["max_poll_interval_ms"] == expected_interval(settings)
        got = drain(sub, 30)
        check_records(got, settings)
        last = max(got, key=lambda r: (r.partition, r.offset))
        sub.seek(last.partition, last.offset)  # read again from there
        again = drain(sub, 1)
        assert [(r.partition, r.offset) for r in again] == [(last.partition, last.offset)]
        sub.commit(last)  # one partition, up to and including `last`
        done = {last.partition}
    assert sum(consumer_lag(settings, group, topic).values()) == 30 - sum(
        r.partition in done for r in got)
    # the restart reads exactly what was not committed, then commits it all
    # (from_beginning: the partitions never committed start at the earliest record)
    left = [r for r in got if r.partition not in done]
    with PredictionSubscriber(settings, group_id=group, topics=[topic], from_beginning=True,
                              enable_auto_commit=False) as sub:
        rest = drain(sub, len(left))
        rest.extend(sub.poll(0.5))  # and nothing more
        sub.commit()
    assert sorted((r.partition, r.offset, r.value) for r in rest) == sorted(
        (r.partition, r.offset, r.value) for r in left)
    assert set(consumer_lag(settings, group, topic).values()) == {0}


def test_async_subscriber_commits_manually_and_resumes_without_loss(
        settings: Settings) -> None:
    group = f"ga-{uuid.uuid4().hex[:8]}"
    topic = topics_for(settings).recommendations.name
    write_recommendations(settings, range(20))

    async def read(n: int, commit_after: int | None) -> list[ConsumerRecord]:
        got: list[ConsumerRecord] = []
        async with AsyncPredictionSubscriber(settings, group_id=group, topics=[topic],
                                             from_beginning=True,
                                             enable_auto_commit=False) as sub:
            async for record in sub:
                got.append(record)
                if len(got) == commit_after:
                    await sub.commit()
                if len(got) >= n:
                    break
        return got

    first = asyncio.run(asyncio.wait_for(read(20, commit_after=12), 60))
    check_records(first, settings)
    # closed without committing the last 8: a restart reads exactly those
    assert sum(consumer_lag(settings, group, topic).values()) == 8
    second = asyncio.run(asyncio.wait_for(read(8, commit_after=8), 60))
    assert sorted(r.offset for r in second) == sorted(r.offset for r in first[12:])
    assert [r.value for r in sorted(second, key=lambda r: (r.partition, r.offset))] == [
        r.value for r in sorted(first[12:], key=lambda r: (r.partition, r.offset))]
    assert set(consumer_lag(settings, group, topic).values()) == {0}


def test_async_subscriber_reads_typed_feedback_and_seeks(settings: Settings) -> None:
    t = topics_for(settings)
    fb = Feedback(rec_id="r1", user_key="k1", key_id="kid", features={"x": 1.0},
                  sequence=[("i1", "view", T0)], shown=[ShownItem(item_id="i1", propensity=1.0)],
                  candidates=[ShownItem(item_id="i1", propensity=1.0)], engaged_item="i1",
                  engaged_type="click", reward=1.0, model="baseline", model_version="v1",
                  policy="greedy", explored=False, decision_ts=T0, outcome_ts=T0,
                  emitted_at=T0)
    with EventProducer(settings, validate=False) as producer:
        producer.send_raw(fb.model_dump_json().encode(), b"k1", topic=t.feedback.name,
                          partition=1)

    async def read() -> tuple[ConsumerRecord, ConsumerRecord]:
        async with AsyncPredictionSubscriber(settings, topics=[t.feedback.name],
                                             from_beginning=True) as sub:
            got: list[ConsumerRecord] = []
            while not got:
                got = await sub.poll(0.2)
            sub.seek(1, 0)
            again: list[ConsumerRecord] = []
            while not again:
                again = await sub.poll(0.2)
            return got[0], again[0]

    first, again = asyncio.run(asyncio.wait_for(read(), 30))
    assert first == again and first.value == fb and isinstance(first.value, Feedback)
    assert (first.topic, first.partition, first.offset, first.key) == (
        t.feedback.name, 1, 0, "k1")


@pytest.fixture
def worker(env: Settings, tmp_path: Path) -> Iterator[Settings]:
    proc = start_worker(env, env.data_dir, tmp_path / "w.log")
    try:
        wait_healthy(f"http://127.0.0.1:{env.web_port}", proc, 90, tmp_path / "w.log")
        yield env
    finally:
        stop_worker(proc)


def test_clients_from_the_docs_round_trip_through_a_worker(worker: Settings) -> None:
    """The acceptance: a kafka-python and an asyncio client, built from the environment as
    docs/sdk.md shows, send events with headers and read the recommendations with their
    partition and offset, committing by hand and resuming after a restart without loss."""
    sync_events = [event(n, user=n % 5) for n in range(40)]
    async_events = [event(n, user=f"a{n % 5}") for n in range(100, 140)]
    with EventProducer.from_env() as producer:
        for e in sync_events:
            producer.send(e, headers={"source": "sync"})

    async def produce() -> None:
        async with AsyncEventProducer.from_env() as producer:
            for e in async_events:
                await producer.send(e, headers={"source": "async"})

    asyncio.run(produce())
    want = {e["event_id"] for e in sync_events + async_events}
    group = f"sdk-{uuid.uuid4().hex[:6]}"

    def read_sync(n: int) -> list[ConsumerRecord]:
        with PredictionSubscriber.from_env(group_id=group, from_beginning=True,
                                           enable_auto_commit=False) as sub:
            got = drain(sub, n, timeout=60)
            for record in got[:n]:
                sub.commit(record)
        return got[:n]

    first = read_sync(30)  # what was read beyond 30 is not committed: read again below
    rest = read_sync(len(want) - 30)
    event_ids = [r.value.event_id for r in first + rest if isinstance(r.value, Recommendation)]
    assert sorted(event_ids) == sorted(want)
    for r in first + rest:
        assert r.partition == partition_of(r.key or "", worker.partitions) and r.offset >= 0

    async def read_async() -> list[ConsumerRecord]:
        got: list[ConsumerRecord] = []
        async with AsyncPredictionSubscriber.from_env(group_id=group + "-a",
                                                      from_beginning=True,
                                                      enable_auto_commit=False) as sub:
            async for record in sub:
                if isinstance(record.value, Recommendation):
                    got.append(record)
                if len(got) >= len(want):
                    await sub.commit()
                    break
        return got

    got = asyncio.run(asyncio.wait_for(read_async(), 60))
    assert sorted(r.value.event_id for r in got if isinstance(r.value, Recommendation)) == (
        sorted(want))
