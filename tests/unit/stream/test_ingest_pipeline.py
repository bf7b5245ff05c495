"""The ingest agent's one-deep pipeline: batch N+1 is prepared while batch N waits for its
acks, reads N's states before they are stored, and broker trouble redoes both in order."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka.errors import KafkaTimeoutError

from stream.kafka.publish import default_partition
from stream.settings import Settings
from stream.state.features import FeatureConfig, UserState
from stream.topics import topics_for
from stream.worker.ingest import IngestAgent
from stream.worker.metrics import Metrics

CHANGELOG = "features-changelog"


@dataclass(eq=False)
class Msg:
    key: bytes
    value: bytes
    partition: int
    offset: int
    topic: str = "events"
    timestamp: float = 0.0


class _Cluster:
    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(8))


class _Client:
    cluster = _Cluster()


class _Batch:
    def __init__(self) -> None:
        self.records: list[tuple[bytes | None, bytes | None]] = []

    def append(self, *, key: bytes | None, value: bytes | None, timestamp: Any) -> object:
        self.records.append((key, value))
        return object()


@dataclass
class _Meta:
    offset: int


class _Producer:
    """Acks every send at once, unless `hold` is set: then the test settles the futures."""

    def __init__(self) -> None:
        self.client = _Client()
        self.hold = False
        self.held: list[asyncio.Future[Any]] = []
        self.sent: list[tuple[str, int, list[tuple[bytes | None, bytes | None]]]] = []
        self.offsets: dict[tuple[str, int], int] = {}

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(self, batch: _Batch, topic: str, partition: int
                         ) -> asyncio.Future[Any]:
        self.sent.append((topic, partition, batch.records))
        base = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = base + len(batch.records)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.held.append(fut)
        else:
            fut.set_result(_Meta(base))
        return fut


class _Store:
    """The memory store as the agent uses it (TableAccess without RocksDB)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}
        self.persisted: dict[Any, int] = {}

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.data[key] = value

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted[tp] = offset


class _Topic:
    def get_topic_name(self) -> str:
        return CHANGELOG


class _Table:
    def __init__(self) -> None:
        self.data = _Store()
        self.changelog_topic = _Topic()


class _Consumer:
    def __init__(self) -> None:
        self._unacked_messages: set[Msg] = set()
        self.acked: list[Msg] = []

    def ack(self, m: Msg) -> None:
        self._unacked_messages.discard(m)
        self.acked.append(m)


class _Topics:
    def __init__(self) -> None:
        self._acking_topics: set[str] = set()

    def add(self, topic: Any) -> None:
        pass


class _FlowControl:
    def is_active(self) -> bool:
        return True


class _App:
    def __init__(self, producer: _Producer) -> None:
        self.topics = _Topics()
        self.flow_control = _FlowControl()
        self.consumer = _Consumer()
        self._producer = producer
        self.producer = self

    def _ensure_producer(self) -> _Producer:
        return self._producer

    def add_dependency(self, service: Any) -> None:
        pass


class _EventsTopic:
    def get_topic_name(self) -> str:
        return "events"


def _agent() -> tuple[IngestAgent, _App, _Producer, _Store]:
    settings = Settings(decision_log=False)
    producer = _Producer()
    app = _App(producer)
    table = _Table()
    agent = IngestAgent(app=app, settings=settings, topics=topics_for(settings), table=table,
                        features=FeatureConfig.from_settings(settings), metrics=Metrics(),
                        events_topic=_EventsTopic())
    return agent, app, producer, table.data


_offsets = iter(range(1_000_000))


def _batch(user: str, ids: list[str], partition: int = 3) -> list[tuple[Msg, float]]:
    out = []
    for i, eid in enumerate(ids):
        ev = {"event_id": eid, "user_id": user, "type": "view", "item_id": f"i{i}",
              "ts": 1_700_000_000_000 + i * 1000}
        out.append((Msg(user.encode(), orjson.dumps(ev), partition, next(_offsets)), 0.0))
    return out


def _total(store: _Store, user: str) -> int | None:
    raw = store.data.get(user.encode())
    return None if raw is None else UserState.from_bytes(raw, 3).total


def _changelog_totals(producer: _Producer, user: str) -> list[int]:
    return [UserState.from_bytes(v, 3).total for topic, _, recs in producer.sent
            if topic == CHANGELOG for k, v in recs if k == user.encode() and v]


def test_the_next_batch_reads_the_states_of_the_batch_still_in_flight() -> None:
    agent, app, producer, store = _agent()
    a = _batch("u1", ["a1", "a2", "a3"])
    b = _batch("u1", ["b1", "a2", "b2"])  # a2 again: a producer retry

    async def go() -> None:
        await agent._pipelined(a)
        # sent, not acknowledged by the agent yet: nothing stored, nothing acked
        assert _total(store, "u1") is None and app.consumer.acked == []
        await agent._pipelined(b)
        # a is complete now; b, which saw a's state, is in flight
        assert _total(store, "u1") == 3
        assert app.consumer.acked == [m for m, _ in a]
        await agent._complete_pending()

    asyncio.run(go())
    assert _total(store, "u1") == 5  # a2 counted once
    assert app.consumer.acked == [m for m, _ in a + b]
    assert agent.stats.events == 6 and agent.stats.duplicates == 1
    assert agent._overlay == {}  # everything stored: nothing shadows the store


def test_broker_trouble_redoes_the_batches_in_flight_in_order() -> None:
    agent, app, producer, store = _agent()
    a = _batch("u1", ["a1", "a2", "a3"])
    b = _batch("u1", ["b1", "b2"])

    async def go() -> None:
        producer.hold = True
        await agent._pipelined(a)
        held_a = list(producer.held)
        producer.hold = False
        for f in held_a:  # a's records never reach the broker
            f.set_exception(KafkaTimeoutError())
        await agent._pipelined(b)  # completing a fails: a and b are processed again
        await agent._complete_pending()

    asyncio.run(go())
    assert _total(store, "u1") == 5
    # redone from the stored state, not from what the failed attempts left: no event is
    # mistaken for a duplicate (which would also drop its recommendation)
    assert agent.stats.duplicates == 0 and agent.stats.recommendations == 5
    assert app.consumer.acked == [m for m, _ in a + b]  # each input acked once, in order
    # the last changelog record of the user is the final state (recovery reads the last)
    assert _changelog_totals(producer, "u1")[-1] == 5
    assert agent._overlay == {} and agent._flight is None


def test_a_batch_in_flight_completes_when_its_acks_arrive_with_no_next_batch() -> None:
    agent, app, producer, store = _agent()
    a = _batch("u2", ["x1", "x2"])

    async def go() -> None:
        run = asyncio.ensure_future(IngestAgent._run(agent))  # a Service.task descriptor
        await agent.sink.put_many([m for m, _ in a])
        for _ in range(200):
            if app.consumer.acked:
                break
            await asyncio.sleep(0.01)
        agent._closing = True
        agent.sink._not_empty.set()
        run.cancel()

    asyncio.run(go())
    assert app.consumer.acked == [m for m, _ in a]
    assert _total(store, "u2") == 2


def test_no_state_reaches_the_changelog_before_its_outputs_are_acknowledged() -> None:
    agent, app, producer, store = _agent()
    rec_topic = agent._outputs.recommendations
    a = _batch("u3", ["c1", "c2"])
    b = _batch("u3", ["c3"])
    c = _batch("u3", ["c4"])

    async def go() -> None:
        producer.hold = True
        await agent._pipelined(a)
        assert [t for t, _, _ in producer.sent] == [rec_topic]  # outputs only
        producer.hold = False
        for f in producer.held:  # the recommendations are acknowledged
            f.set_result(_Meta(0))
        await agent._complete_pending()  # no next batch: a sends its changelog itself
        assert [t for t, _, _ in producer.sent] == [rec_topic, CHANGELOG]
        assert _total(store, "u3") == 2 and len(app.consumer.acked) == 2
        await agent._pipelined(b)
        await asyncio.sleep(0)  # b's outputs acknowledged meanwhile
        await agent._pipelined(c)  # b's changelog rides along with c's outputs
        assert [t for t, _, _ in producer.sent][2:] == [rec_topic, rec_topic, CHANGELOG]
        await agent._complete_pending()

    asyncio.run(go())
    assert _changelog_totals(producer, "u3") == [2, 3, 4]
    assert app.consumer.acked == [m for m, _ in a + b + c]


def test_outputs_go_to_the_partition_their_event_came_from() -> None:
    """Co-partitioning: the joins read events and decisions partition by partition, so the
    outputs follow the event's partition, not murmur2 of the key (a CRC32 producer's)."""
    agent, app, producer, store = _agent()
    user = next(u for u in (f"u{i}" for i in range(100)) if default_partition(u.encode(), 8) != 5)
    a = _batch(user, ["p1", "p2"], partition=5)
    unkeyed = _batch(user, ["p3"], partition=5)
    unkeyed[0][0].key = None  # type: ignore[assignment]

    async def go() -> None:
        await agent._pipelined(a + unkeyed)
        await agent._complete_pending()

    asyncio.run(go())
    placed = {(t, p) for t, p, _ in producer.sent}
    assert placed == {(agent._outputs.recommendations, 5), (CHANGELOG, 5),
                      (agent._outputs.dlq, 0)}
    assert _total(store, user) == 2 and agent.stats.dlq == 1
