"""Micro-batcher: max wait, batching, backpressure, timeouts, shutdown, error isolation."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from model.batching import MicroBatcher
from model.errors import BatcherClosed, Overloaded


def double(xs: list[int]) -> list[int]:
    return [2 * x for x in xs]


def test_results_in_order_and_batched_under_load() -> None:
    sizes: list[int] = []

    def fn(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        assert torch.is_inference_mode_enabled()
        return double(xs)
    with MicroBatcher(fn, max_batch=64, max_wait_ms=20) as b:
        assert b.map(list(range(500))) == [2 * x for x in range(500)]
    assert max(sizes) == 64 and sum(sizes) == 500
    assert len(sizes) < 20  # many requests per call, not one each
    m = b.metrics()
    assert m["completed"] == 500 and m["batches"] == len(sizes)
    assert sum(m["batch_size_hist"].values()) == len(sizes)
    assert m["batch_size_hist"]["<=64"] >= 7
    assert m["compute_ms"]["count"] == len(sizes) and m["queue_wait_ms"]["count"] == 500


def test_max_wait_is_honoured_for_a_lone_request() -> None:
    with MicroBatcher(double, max_batch=256, max_wait_ms=30) as b:
        t0 = time.perf_counter()
        assert b.submit(21).result(timeout=2) == 42
        waited = time.perf_counter() - t0
    assert 0.025 <= waited < 0.5  # waited for company, but not much longer than max_wait
    with MicroBatcher(double, max_batch=256, max_wait_ms=0) as b:
        t0 = time.perf_counter()
        b.submit(1).result(timeout=2)
        assert time.perf_counter() - t0 < 0.025


def test_map_closes_its_last_batch_at_once() -> None:
    """A caller of map() waits for all its requests and sends no more: its last batch does
    not wait max_wait_ms for company (the worker calls map once per batch of events)."""
    sizes: list[int] = []

    def fn(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        return double(xs)
    with MicroBatcher(fn, max_batch=64, max_wait_ms=10_000) as b:
        t0 = time.perf_counter()
        assert b.map(list(range(100))) == [2 * x for x in range(100)]
        assert b.map([5]) == [10]
        waited = time.perf_counter() - t0
        assert b.metrics()["queue_wait_ms"]["max"] < 5_000
        # a lone submit still waits for company (here: until the map that follows flushes)
        lone = b.submit(1)
        time.sleep(0.05)
        assert not lone.done()
        assert b.map([2]) == [4] and lone.result(timeout=2) == 2
    assert waited < 5.0 and sizes == [64, 36, 1, 2]


def test_backpressure_blocks_then_rejects_when_queue_stays_full() -> None:
    gate = threading.Event()

    def slow(xs: list[int]) -> list[int]:
        gate.wait(5)
        return xs
    b = MicroBatcher(slow, max_batch=1, max_wait_ms=0, max_queue=3, block_s=0.1)
    try:
        first = b.submit(0)
        time.sleep(0.05)  # the worker holds request 0; the queue is now empty
        queued = [b.submit(i) for i in range(1, 4)]
        t0 = time.perf_counter()
        with pytest.raises(Overloaded):
            b.submit(99)
        assert time.perf_counter() - t0 >= 0.09  # it blocked before giving up
        assert b.metrics()["rejected"] == 1 and b.metrics()["queue_depth"] == 3
        gate.set()
        assert first.result(2) == 0 and [f.result(2) for f in queued] == [1, 2, 3]
    finally:
        gate.set()
        b.close()


def test_request_timeout_skips_stale_requests() -> None:
    gate = threading.Event()
    calls: list[list[int]] = []

    def slow(xs: list[int]) -> list[int]:
        calls.append(xs)
        gate.wait(5)
        return xs
    with MicroBatcher(slow, max_batch=1, max_wait_ms=0, timeout_s=0.05) as b:
        busy = b.submit(0, timeout_s=5)
        time.sleep(0.02)
        stale = b.submit(1)
        time.sleep(0.1)
        gate.set()
        assert busy.result(2) == 0
        with pytest.raises(TimeoutError):
            stale.result(2)
    assert calls == [[0]]  # the stale request was never computed
    assert b.metrics()["timeouts"] == 1


def test_close_finishes_in_flight_and_queued_work_then_refuses() -> None:
    started = threading.Event()

    def slow(xs: list[int]) -> list[int]:
        started.set()
        time.sleep(0.05)
        return double(xs)
    b = MicroBatcher(slow, max_batch=4, max_wait_ms=1)
    futures = b.submit_many(list(range(20)))
    started.wait(2)
    b.close()
    assert [f.result(0) for f in futures] == [2 * x for x in range(20)]
    assert b.closed
    with pytest.raises(BatcherClosed):
        b.submit(1)


def test_an_error_reaches_only_its_own_batch() -> None:
    def picky(xs: list[int]) -> list[int]:
        if 13 in xs:
            raise ValueError("unlucky batch")
        return double(xs)
    with MicroBatcher(picky, max_batch=5, max_wait_ms=50) as b:
        futures = b.submit_many(list(range(15)))  # batches [0..4] [5..9] [10..14]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(2))
            except ValueError:
                outcomes.append(None)
        # and the batcher keeps serving afterwards
        assert b.submit(4).result(2) == 8
    assert outcomes[:10] == [2 * x for x in range(10)]
    assert outcomes[10:] == [None] * 5
    assert b.metrics()["errors"] == 5


def test_wrong_result_count_is_an_error_not_a_hang() -> None:
    with MicroBatcher(lambda xs: xs[:-1], max_batch=2, max_wait_ms=20) as b:
        f1, f2 = b.submit_many([1, 2])
        with pytest.raises(RuntimeError, match="results"):
            f1.result(2)
        with pytest.raises(RuntimeError):
            f2.result(2)


def test_close_refuses_a_submit_that_waits_for_room() -> None:
    gate = threading.Event()

    def slow(xs: list[int]) -> list[int]:
        gate.wait(5)
        return xs
    b = MicroBatcher(slow, max_batch=1, max_wait_ms=0, max_queue=1, block_s=5)
    try:
        first = b.submit(0)
        time.sleep(0.05)  # the worker holds request 0
        queued = b.submit(1)  # fills the queue
        outcome: list[BaseException] = []

        def blocked() -> None:
            try:
                b.submit(2)
            except BaseException as e:  # noqa: BLE001 - recorded for the assertion
                outcome.append(e)
        t = threading.Thread(target=blocked)
        t.start()
        time.sleep(0.05)
        closer = threading.Thread(target=b.close)
        closer.start()
        t.join(2)
        assert len(outcome) == 1 and isinstance(outcome[0], BatcherClosed)
        gate.set()
        closer.join(2)
        assert first.result(2) == 0 and queued.result(2) == 1  # queued work still finishes
    finally:
        gate.set()
        b.close()


def test_a_full_batch_is_taken_without_waiting_for_max_wait() -> None:
    sizes: list[int] = []

    def fn(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        return xs
    with MicroBatcher(fn, max_batch=8, max_wait_ms=2_000) as b:
        t0 = time.perf_counter()
        assert b.map(list(range(8))) == list(range(8))
        assert time.perf_counter() - t0 < 1.0  # full at 8: no 2 s wait for company
    assert sizes == [8]
