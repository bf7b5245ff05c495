"""Dynamic micro-batcher: one thread turns many small requests into few batched model calls."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch

from model.errors import BatcherClosed, BatchError, ConfigError, Overloaded
from model.stats import percentile

__all__ = ["HIST_BOUNDS", "MicroBatcher"]

T = TypeVar("T")
R = TypeVar("R")

HIST_BOUNDS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(slots=True)
class _Request(Generic[T, R]):
    payload: T
    future: Future[R]
    enqueued: float
    deadline: float | None
    flush: bool = False  # closes its batch at once: its caller sends nothing more to wait for


@dataclass
class _Stat:
    """Running count/sum/max plus a window of recent samples for percentiles."""

    count: int = 0
    total: float = 0.0
    max: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=2048))

    def add(self, v: float) -> None:
        self.count += 1
        self.total += v
        self.max = max(self.max, v)
        self.recent.append(v)

    def snapshot(self) -> dict[str, float | None]:
        return {"count": self.count, "mean": self.total / self.count if self.count else 0.0,
                "p50": percentile(self.recent, 0.50), "p99": percentile(self.recent, 0.99),
                "max": self.max}


class MicroBatcher(Generic[T, R]):
    """Queue requests; a dedicated thread calls `fn(batch)` with up to `max_batch` payloads.

    A batch closes when it is full, `max_wait_ms` after its first request arrived (a backlog
    is taken at once, without waiting), or when it holds a `flush` request: `map` flushes
    its last one, since a caller waiting on all of them has no more company to wait for.
    `fn` runs under `torch.inference_mode()` and must return one result per payload, in
    order; if it raises, only that batch's requests fail.
    The queue holds at most `max_queue` requests: `submit` blocks while it is full (that is
    the backpressure) and raises `Overloaded` after `block_s`. A request not started within
    `timeout_s` of its submission fails with `TimeoutError` instead of being computed.
    `close()` stops intake, finishes everything already queued, and joins the thread.
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], *, max_batch: int = 256,
                 max_wait_ms: float = 5.0, max_queue: int = 4096,
                 timeout_s: float | None = 10.0, block_s: float | None = 10.0,
                 name: str = "micro-batcher", inference_mode: bool = True) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ConfigError("max_batch and max_queue must be >= 1, max_wait_ms >= 0")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.block_s = block_s
        self._inference = inference_mode
        # One lock guards the queue, the counters and the stats. The worker sleeps on `_ready`
        # and a submit wakes it only when the queue reaches `_wake_at` (1 while it waits for
        # work, max_batch while it waits for company): one wake-up per batch, not per request.
        self._mutex = threading.Lock()
        self._ready = threading.Condition(self._mutex)
        self._room = threading.Condition(self._mutex)
        self._pending: deque[_Request[T, R]] = deque()
        self._wake_at: int | None = None  # None: the worker is not waiting
        self._closing = False
        self._flushes = 0  # queued flush requests
        self._hist = dict.fromkeys(HIST_BOUNDS, 0)
        self._wait = _Stat()
        self._compute = _Stat()
        self._counts = {"requests": 0, "batches": 0, "timeouts": 0, "errors": 0,
                        "rejected": 0, "completed": 0}
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- caller side ----------------------------------------------------------------------
    def submit(self, payload: T, timeout_s: float | None = None, flush: bool = False
               ) -> Future[R]:
        """Enqueue one request; the future resolves to its result (or its error). `flush`:
        the batch it joins closes without waiting for more."""
        now = time.monotonic()
        t = self.timeout_s if timeout_s is None else timeout_s
        req: _Request[T, R] = _Request(payload, Future(), now, None if t is None else now + t,
                                       flush)
        pending = self._pending
        with self._mutex:
            if self._closing:
                raise BatcherClosed("micro-batcher is closed")
            if len(pending) >= self.max_queue and not self._room.wait_for(
                    lambda: len(pending) < self.max_queue or self._closing, self.block_s):
                self._counts["rejected"] += 1
                raise Overloaded(f"request queue full ({self.max_queue}) for {self.block_s}s")
            if self._closing:
                raise BatcherClosed("micro-batcher is closed")
            pending.append(req)
            self._counts["requests"] += 1
            self._flushes += flush
            if self._wake_at is not None and (len(pending) >= self._wake_at or flush):
                self._ready.notify()
        return req.future

    def submit_many(self, payloads: Sequence[T], timeout_s: float | None = None,
                    flush: bool = False) -> list[Future[R]]:
        """Enqueue all; with `flush`, the last one closes its batch."""
        last = len(payloads) - 1
        return [self.submit(p, timeout_s, flush and i == last) for i, p in enumerate(payloads)]

    def map(self, payloads: Sequence[T], timeout_s: float | None = None) -> list[R]:
        """Submit all and wait for all; raises the first failure."""
        futures = self.submit_many(payloads, timeout_s, flush=True)
        return [f.result() for f in futures]

    def close(self, timeout: float | None = None) -> None:
        """Stop taking requests, finish the queued ones, join the thread."""
        with self._mutex:
            self._closing = True
            self._ready.notify_all()
            self._room.notify_all()
        self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closing

    def __enter__(self) -> MicroBatcher[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def metrics(self) -> dict[str, Any]:
        """A plain-dict snapshot: counters, batch-size histogram, queue wait and compute ms."""
        with self._mutex:
            return {**self._counts, "queue_depth": len(self._pending),
                    "batch_size_hist": {f"<={b}": n for b, n in self._hist.items()},
                    "queue_wait_ms": self._wait.snapshot(),
                    "compute_ms": self._compute.snapshot(),
                    "max_batch": self.max_batch, "max_wait_ms": self.max_wait_s * 1000.0}

    # -- worker side ----------------------------------------------------------------------
    def _collect(self) -> list[_Request[T, R]] | None:
        pending = self._pending
        with self._mutex:
            if not pending:
                if self._closing:
                    return None
                self._sleep(1, 0.05)
                if not pending:
                    return None
            close_at = pending[0].enqueued + self.max_wait_s
            while len(pending) < self.max_batch and not self._closing and not self._flushes:
                remaining = close_at - time.monotonic()
                if remaining <= 0:
                    break
                self._sleep(self.max_batch, remaining)
            batch = [pending.popleft() for _ in range(min(len(pending), self.max_batch))]
            self._flushes -= sum(r.flush for r in batch)
            self._room.notify(len(batch))
        return batch

    def _sleep(self, wake_at: int, timeout: float) -> None:
        """With the mutex held: sleep until the queue reaches wake_at, a close, or timeout."""
        self._wake_at = wake_at
        try:
            self._ready.wait(timeout)
        finally:
            self._wake_at = None

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                if self._closing:
                    return
                continue
            self._process(batch)

    def _process(self, batch: list[_Request[T, R]]) -> None:
        now = time.monotonic()
        live: list[_Request[T, R]] = []
        timeouts = 0
        for r in batch:
            if r.deadline is not None and now > r.deadline:
                timeouts += 1
                if r.future.set_running_or_notify_cancel():
                    r.future.set_exception(TimeoutError(
                        f"request waited {now - r.enqueued:.3f}s, timeout passed"))
            elif r.future.set_running_or_notify_cancel():
                live.append(r)
        error: BaseException | None = None
        results: Sequence[R] = ()
        t0 = time.perf_counter()
        if live:
            try:
                if self._inference:
                    with torch.inference_mode():
                        results = self.fn([r.payload for r in live])
                else:
                    results = self.fn([r.payload for r in live])
                if len(results) != len(live):
                    raise BatchError(f"batch function returned {len(results)} results "
                                       f"for {len(live)} requests")
            except Exception as e:  # noqa: BLE001 - delivered to exactly this batch's callers
                error = e
        compute_ms = (time.perf_counter() - t0) * 1000.0
        for i, r in enumerate(live):
            if error is not None:
                r.future.set_exception(error)
            else:
                r.future.set_result(results[i])
        with self._mutex:
            self._counts["timeouts"] += timeouts
            if live:
                self._counts["batches"] += 1
                self._counts["completed" if error is None else "errors"] += len(live)
                bound = next((b for b in HIST_BOUNDS if len(live) <= b), HIST_BOUNDS[-1])
                self._hist[bound] += 1
                self._compute.add(compute_ms)
                for r in live:
                    self._wait.add((now - r.enqueued) * 1000.0)
