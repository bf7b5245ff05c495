"""Batch delivery from Faust's consumer to lamstream's agents, around Faust's per-message path.

Why: a profile of a Faust worker on this class of machine puts most of the cost of a message
in Faust's delivery path, not in user code: `Consumer._drain_messages` awaits
`wait_first(callback(message), suspend_flow.wait())` for every message (two tasks each), then
the conductor decodes, flow-controls and queues it, and the stream's iterator wakes once per
message. That caps a Faust agent at a few thousand events/s whatever the agent does.

lamstream keeps everything else Faust gives (consumer group, rebalancing, acks and offset
commits, tables with changelogs and recovery, the web server, timers) and changes one thing:
records of the topics registered here skip the per-message callback and are handed over as
lists to a `BatchSink`, which the ingest agent drains in micro-batches. The agent acks each
message after its batch is fully processed, so Faust commits exactly what was processed.
Other topics (e.g. model-updates) go through Faust's normal path, where `wait_first` is only
used while flow is actually suspended (the same semantics, two tasks fewer per message). The
drain loop that does the hand-over replaces a Faust private, so it lives with every other such
touch in stream.kafka.faust_patches (install_batch_drain, register_sink); this module is the
sink itself.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable

from faust.types import TP, Message


class BatchSink:
    """A bounded hand-over buffer of (message, receipt time) between consumer and agent.

    It is registered with Faust's flow control, which calls `clear()` in two places: when a
    rebalance revokes partitions (flow suspended: whatever is buffered may belong to another
    worker now, so it is dropped), and again when flow resumes after recovery. The second
    call comes *after* Faust has seeked every partition to its committed offset, so records
    fetched in between are already at the right position and must not be dropped: the
    consumer has moved past them and would never fetch them again (a moved partition then
    silently stopped at its first post-recovery fetch). So `clear()` only drops while flow
    is suspended; `drop_all()` drops unconditionally (worker shutdown).
    """

    def __init__(self, maxsize: int = 50_000,
                 on_drop: Callable[[list[Message]], None] | None = None,
                 flow_active: Callable[[], bool] | None = None) -> None:
        self.maxsize = maxsize
        self.on_drop = on_drop
        self.flow_active = flow_active
        self.epoch = 0
        self._buf: collections.deque[tuple[Message, float]] = collections.deque()
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()

    def __len__(self) -> int:
        return len(self._buf)

    async def put_many(self, messages: list[Message], epoch: int | None = None) -> None:
        """Called by the consumer's drain loop; waits while the buffer is full (backpressure).

        `epoch` is the sink's epoch when the messages were fetched: if a rebalance cleared
        the buffer since, they are dropped, not delivered (their partitions may belong to
        another worker now; the ones still ours are fetched again from the committed offset).
        """
        if epoch is None:
            epoch = self.epoch
        while len(self._buf) >= self.maxsize:
            self._not_full.clear()
            await self._not_full.wait()
        if epoch != self.epoch:
            if self.on_drop is not None:
                self.on_drop(messages)
            return
        now = time.monotonic()
        self._buf.extend((m, now) for m in messages)
        self._not_empty.set()

    async def get_batch(self, max_n: int, within_s: float) -> list[tuple[Message, float]]:
        """Wait for at least one message, then up to within_s for max_n; never more."""
        while not self._buf:
            self._not_empty.clear()
            await self._not_empty.wait()
        if len(self._buf) < max_n and within_s > 0:
            deadline = time.monotonic() + within_s
            while len(self._buf) < max_n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._not_empty.clear()
                try:
                    await asyncio.wait_for(self._not_empty.wait(), left)
                except TimeoutError:
                    break
        n = min(max_n, len(self._buf))
        buf = self._buf
        out = [buf.popleft() for _ in range(n)]
        if len(buf) < self.maxsize:
            self._not_full.set()
        return out

    def clear(self) -> None:
        """Faust's flow control: drop everything buffered, unless flow is running (resume)."""
        if self.flow_active is not None and self.flow_active():
            return
        self.drop_all()

    def drop_all(self) -> None:
        """Drop everything buffered and whatever is still on its way in."""
        self.epoch += 1
        dropped = [m for m, _ in self._buf]
        self._buf.clear()
        self._not_full.set()
        if self.on_drop is not None and dropped:
            self.on_drop(dropped)

    def drop(self, tps: Iterable[TP]) -> int:
        """Forget buffered messages of revoked partitions (they were never acked)."""
        gone = set(tps)
        keep = [(m, t) for m, t in self._buf if m.tp not in gone]
        dropped = len(self._buf) - len(keep)
        self._buf = collections.deque(keep)
        if len(self._buf) < self.maxsize:
            self._not_full.set()
        return dropped
