"""The skeleton both joins of the feedback app share: partitions, their users, due times, saving.

Both joins (stream.feedback.app: rewards, stream.feedback.risk_labels: risk labels) read
co-partitioned topics keyed by user id into a table of bytes, one state per user, so one table
partition holds everything about the users of one input partition. Per batch and partition
they read each touched user's state once (UserCache), fold the records in, visit the users
whose next deadline the partition's watermark has passed (PartitionIndex), and then save:
1. the batch's output records, acked; 2. the users' states and a per-partition meta record in
the table's changelog, acked; 3. the local store. Only then are the inputs acked, so a crash
never loses a record; what each join does about the repeats a crash can cause between 1 and
2 is said in its module. The pieces up to `stored_users` are pure; PartitionedJoin drives them.
"""

from __future__ import annotations

import heapq
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import faust
import orjson
from faust.types import TP

from stream.errors import InfraError
from stream.kafka.publish import BatchPublisher, LazyPublisher
from stream.state.table import TableAccess

Items = list[tuple[bytes, bytes | None]]  # (key, value or None: delete), in write order


def meta_key(p: int) -> bytes:
    """The key of partition p's meta record. User ids are never empty, so a key starting with
    NUL cannot collide with one."""
    return b"\x00meta:%d" % p


@dataclass
class PartitionIndex:
    """What a join keeps in memory per owned partition: its watermark (the latest event time
    seen there) and when each user is due next, as a heap with one live entry per user."""

    watermark: int = 0
    due: list[tuple[int, str]] = field(default_factory=list)  # heap of (deadline, user)
    scheduled: dict[str, int] = field(default_factory=dict)  # user -> deadline in `due`

    def schedule(self, uid: str, deadline: int | None) -> None:
        if deadline is not None and self.scheduled.get(uid) != deadline:
            self.scheduled[uid] = deadline
            heapq.heappush(self.due, (deadline, uid))

    def pop_due(self, limit: int) -> Iterator[str]:
        """The users whose deadline is at or before `limit`, each once (entries a later
        schedule superseded are dropped)."""
        due, scheduled = self.due, self.scheduled
        while due and due[0][0] <= limit:
            deadline, uid = heapq.heappop(due)
            if scheduled.get(uid) == deadline:
                del scheduled[uid]
                yield uid

    def index(self, deadlines: Iterable[tuple[bytes, int | None]]) -> None:
        """Rebuild the heap from (user key, next deadline) of every stored user."""
        for key, deadline in deadlines:
            if deadline is not None:
                self.due.append((deadline, key.decode()))
                self.scheduled[key.decode()] = deadline
        heapq.heapify(self.due)


class JoinUser(Protocol):
    def empty(self) -> bool: ...


U = TypeVar("U", bound=JoinUser)
P = TypeVar("P", bound=PartitionIndex)


class UserCache(Generic[U]):
    """The users one batch touches on one partition, each read from the table on first touch."""

    def __init__(self, partition: int, get: Callable[[bytes], bytes | None],
                 load: Callable[[bytes], U], new: Callable[[int], U]) -> None:
        self.partition = partition
        self.users: dict[str, U] = {}
        self._get, self._load, self._new = get, load, new

    def __call__(self, uid: str) -> U:
        st = self.users.get(uid)
        if st is None:
            raw = self._get(uid.encode())
            st = self.users[uid] = self._load(raw) if raw else self._new(self.partition)
        return st

    def items(self) -> Iterable[tuple[str, U]]:
        return self.users.items()

    def writes(self, encode: Callable[[U], bytes]) -> Items:
        """What to store: each user's state, or a delete once it holds nothing."""
        return [(uid.encode(), None if st.empty() else encode(st))
                for uid, st in self.users.items()]


def group_by_partition(events: list[Any]) -> dict[int, list[Any]]:
    """Faust events by the partition of their message, in order."""
    by_part: dict[int, list[Any]] = {}
    for ev in events:
        by_part.setdefault(ev.message.partition, []).append(ev)
    return by_part


def stored_users(access: TableAccess, p: int, partition_of: Callable[[bytes], int]
                 ) -> Iterator[tuple[bytes, bytes]]:
    """(key, state) of every user stored for partition p; `partition_of(state)` tells the
    partitions apart in a store that holds them all in one mapping."""
    for key, value in access.items(p):
        if not value or key.startswith(b"\x00"):
            continue  # a delete, or a meta record
        if access.shared and partition_of(value) != p:
            continue
        yield key, value


@dataclass
class JoinBatch:
    """One batch of a join: its publisher, its clock, and the records it emitted."""

    out: BatchPublisher
    now_ms: int
    emitted: list[dict[str, Any]] = field(default_factory=list)

    async def emit(self, topic: str, user_key: str, record: dict[str, Any], p: int) -> None:
        """An output record for input partition p: to partition p, keyed by the pseudonym."""
        await self.out.add(topic, user_key.encode(), orjson.dumps(record), p)
        self.emitted.append(record)


class PartitionedJoin(ABC, Generic[P, U]):
    """A join over co-partitioned inputs, batch by batch; subclasses say what a partition
    remembers (restore, meta), what a user's state is (load_user, new_user, encode_user), and
    how records join (join_partition)."""

    what = "join output"  # for error messages

    def __init__(self, app: Any, table: Any) -> None:
        self.app = app
        self.table = table
        self.parts: dict[int, P] = {}
        self._publisher = LazyPublisher(app)

    # -- what subclasses say ------------------------------------------------------------------
    @abstractmethod
    def new_partition(self) -> P:
        """The index of a partition before its meta record and users are read."""

    @abstractmethod
    def meta(self, ps: P) -> dict[str, Any]:
        """The partition's meta record, saved with each batch's states."""

    @abstractmethod
    def load_meta(self, ps: P, meta: dict[str, Any]) -> None:
        """Restore what `meta` saved."""

    @abstractmethod
    def partition_of(self, raw: bytes) -> int:
        """The partition of a stored user state (read where one store holds them all)."""

    @abstractmethod
    def next_due(self, raw: bytes) -> int | None:
        """When a stored user state is due next (None: never)."""

    @abstractmethod
    def load_user(self, raw: bytes) -> U:
        """A user's stored state."""

    @abstractmethod
    def new_user(self, p: int) -> U:
        """The state of a user not stored yet, on partition p."""

    @abstractmethod
    def encode_user(self, st: U) -> bytes:
        """A user's state as stored."""

    @abstractmethod
    async def join_partition(self, p: int, ps: P, users: UserCache[U], events: list[Any],
                             batch: JoinBatch) -> None:
        """Fold partition p's records of the batch into its users, emitting through
        `batch`, then visit the users whose deadline the watermark has passed."""

    def after_emit(self, acked: dict[tuple[str, int], int], batch: JoinBatch) -> None:
        """The batch's output records are acked (last offset per topic-partition)."""

    # -- the skeleton ---------------------------------------------------------------------
    def forget(self, partitions: Iterable[int]) -> None:
        """Partitions revoked: their in-memory index must be rebuilt when they come back."""
        for p in partitions:
            self.parts.pop(p, None)

    async def ready(self, p: int, access: TableAccess) -> P:
        ps = self.parts.get(p)
        if ps is None:
            ps = self.parts[p] = await self.restore(p, access)
        return ps

    async def restore(self, p: int, access: TableAccess) -> P:
        """Partition p's index, rebuilt from the table (first use after an assignment)."""
        ps = self.new_partition()
        raw = access.reader(p)(meta_key(p))
        if raw:
            self.load_meta(ps, orjson.loads(raw))
        ps.index((key, self.next_due(value))
                 for key, value in stored_users(access, p, self.partition_of))
        return ps

    async def process(self, events: list[Any]) -> list[dict[str, Any]]:
        """Join one batch; returns the records it emitted."""
        access = TableAccess(self.table.data)
        batch = JoinBatch(self._publisher(), int(time.time() * 1000))
        touched: dict[int, UserCache[U]] = {}
        for p, msgs in group_by_partition(events).items():
            ps = await self.ready(p, access)
            users = touched[p] = UserCache(p, access.reader(p), self.load_user, self.new_user)
            await self.join_partition(p, ps, users, msgs, batch)
        await self._save(access, touched, batch)
        return batch.emitted

    async def _save(self, access: TableAccess, touched: dict[int, UserCache[U]],
                    batch: JoinBatch) -> None:
        """Output records, then states and meta records in the changelog, then the store."""
        out = batch.out
        changelog = self.table.changelog_topic.get_topic_name()
        writes: dict[int, Items] = {}
        try:
            self.after_emit(await out.flush(), batch)
            for p, users in touched.items():
                items = writes[p] = users.writes(self.encode_user)
                items.append((meta_key(p), orjson.dumps(self.meta(self.parts[p]))))
                for key, value in items:
                    await out.add(changelog, key, value, p)
            saved = await out.flush()
        except Exception as exc:
            out.discard()  # nothing of this batch is sent later: its inputs come again
            raise InfraError(f"publishing {self.what} failed: {exc!r}") from exc
        for p, items in writes.items():
            access.apply(p, items)
        access.mark_persisted(changelog, saved)

    def attach_agent(self, source: Any, name: str, owner_topic: str) -> None:
        """Run as the app's agent `name` over `source`, in batches of up to 1000 records or
        50 ms; a rebalance that revokes partitions of `owner_topic` makes it forget them."""

        app: faust.App = self.app

        @app.agent(source, name=name)
        async def join(stream: Any) -> None:
            async for events in stream.take_events(1000, within=0.05):
                await self.process(list(events))

        @app.on_partitions_revoked.connect  # type: ignore[arg-type]
        async def _revoked(sender: Any, revoked: set[TP], **kwargs: Any) -> None:
            self.forget({tp.partition for tp in revoked if tp.topic == owner_topic})
