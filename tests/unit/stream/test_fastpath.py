"""The batch hand-over buffer between Faust's consumer and the ingest agent (kafka.fastpath)."""

from __future__ import annotations

import asyncio
from typing import Any

from stream.kafka.fastpath import BatchSink
from stream.kafka.faust_patches import fetch


class Flow:
    """Stands in for Faust's flow control: suspended during a rebalance, active otherwise."""

    def __init__(self) -> None:
        self.active = True

    def is_active(self) -> bool:
        return self.active


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_rebalance_drops_what_is_buffered_and_what_was_fetched_before_it() -> None:
    async def scenario() -> tuple[list[Any], list[Any]]:
        flow, dropped = Flow(), []
        sink = BatchSink(maxsize=100, on_drop=dropped.extend, flow_active=flow.is_active)
        await sink.put_many(["a", "b"])  # type: ignore[list-item]
        fetched_at = sink.epoch  # a fetch starts before the rebalance ...
        flow.active = False  # ... Faust suspends flow and clears its queues ...
        sink.clear()
        flow.active = True
        await sink.put_many(["c"], fetched_at)  # type: ignore[list-item]  # ... then hands over
        await sink.put_many(["d"], sink.epoch)  # type: ignore[list-item]  # fetched after
        batch = await sink.get_batch(10, 0.0)
        return [m for m, _ in batch], dropped

    delivered, dropped = run(scenario())
    assert delivered == ["d"]
    assert dropped == ["a", "b", "c"]


def test_resuming_flow_after_recovery_keeps_what_was_fetched_after_the_seek() -> None:
    """Faust clears its queues again when flow resumes, after seeking to the committed
    offsets: records fetched in between are at the right position and the consumer has
    moved past them, so dropping them lost them for good (a moved partition stalled)."""
    async def scenario() -> list[Any]:
        flow, dropped = Flow(), []
        sink = BatchSink(maxsize=100, on_drop=dropped.extend, flow_active=flow.is_active)
        await sink.put_many(["after-seek-1", "after-seek-2"])  # type: ignore[list-item]
        flow.active = True  # FlowControlEvent.resume(): active first, then clear()
        sink.clear()
        batch = await sink.get_batch(10, 0.0)
        assert not dropped
        return [m for m, _ in batch]

    assert run(scenario()) == ["after-seek-1", "after-seek-2"]


def test_drop_all_always_drops_and_get_batch_never_returns_more_than_asked() -> None:
    async def scenario() -> tuple[int, int, list[Any]]:
        dropped: list[Any] = []
        sink = BatchSink(maxsize=100, on_drop=dropped.extend, flow_active=lambda: True)
        await sink.put_many(list(range(7)))  # type: ignore[arg-type]
        first = await sink.get_batch(5, 0.0)
        sink.drop_all()
        await sink.put_many([99])  # type: ignore[list-item]
        rest = await sink.get_batch(5, 0.0)
        return len(first), len(rest), dropped

    first, rest, dropped = run(scenario())
    assert (first, rest) == (5, 1)
    assert dropped == [5, 6]


class FakeConsumer:
    """Just what stream.kafka.faust_patches.fetch reads of Faust's consumer."""

    def __init__(self, records: dict[str, list[Any]], *, active: set[str] | None,
                 flow_active: bool = True, new_generation: bool = False) -> None:
        self._records = records
        self._active = active
        self.flow_active = flow_active
        self._new_generation = new_generation
        self._buffered_partitions: set[str] = set()
        self.should_stop = False
        self.seeks: list[tuple[str, int]] = []
        self.app = type("App", (), {"consumer_generation_id": 1,
                                    "monitor": type("M", (), {
                                        "track_tp_end_offset": lambda *a: None})()})()

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        if self._new_generation:  # a rebalance happened while the fetch was waiting
            self.app.consumer_generation_id += 1
        return self._records, self._active

    def _to_message(self, tp: str, record: Any) -> Any:
        return (tp, record.offset)

    def highwater(self, tp: str) -> int:
        return 0

    def assignment(self) -> set[str]:
        return {"p0", "p1"}

    async def seek(self, tp: str, offset: int) -> None:
        self.seeks.append((tp, offset))


class Rec:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def recs(*offsets: int) -> list[Rec]:
    return [Rec(o) for o in offsets]


def test_fetch_delivers_records_of_active_partitions() -> None:
    c = FakeConsumer({"p0": recs(5, 6), "p1": recs(9)}, active={"p0", "p1"})
    out = run(fetch(c, 1.0))  # type: ignore[arg-type]
    assert [m for _, m in out] == [("p0", 5), ("p0", 6), ("p1", 9)]
    assert c.seeks == []


def test_fetch_seeks_back_what_it_cannot_deliver_instead_of_skipping_it() -> None:
    paused = FakeConsumer({"p0": recs(5, 6), "p1": recs(9, 10)}, active={"p0"})
    assert [m for _, m in run(fetch(paused, 1.0))] == [("p0", 5), ("p0", 6)]  # type: ignore[arg-type]
    assert paused.seeks == [("p1", 9)]
    stopped = FakeConsumer({"p0": recs(5), "p2": recs(1)}, active=None, flow_active=False)
    assert run(fetch(stopped, 1.0)) == []  # type: ignore[arg-type]
    assert stopped.seeks == [("p0", 5)]  # p2 is no longer assigned here: left alone
    moved = FakeConsumer({"p1": recs(0, 1, 2)}, active=None, new_generation=True)
    assert run(fetch(moved, 1.0)) == []  # type: ignore[arg-type]
    assert moved.seeks == [("p1", 0)]
