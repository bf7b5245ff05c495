"""The join skeleton's pure parts: due times per partition, users read once per batch, the
users stored for a partition."""

from __future__ import annotations

from stream.state.joins import PartitionIndex, UserCache, meta_key, stored_users
from stream.state.table import TableAccess


def test_due_users_come_once_in_deadline_order_and_a_reschedule_supersedes() -> None:
    ps = PartitionIndex()
    ps.index([(b"a", 30), (b"b", 10), (b"c", None)])  # c has nothing pending
    ps.schedule("d", 20)
    ps.schedule("b", 25)  # b's deadline moved: its entry at 10 no longer counts
    assert list(ps.pop_due(9)) == []
    assert list(ps.pop_due(25)) == ["d", "b"]
    assert list(ps.pop_due(25)) == []  # popped once
    ps.schedule("b", 40)
    ps.schedule("b", 40)  # the same deadline again: one entry
    assert list(ps.pop_due(100)) == ["a", "b"]
    assert ps.due == [] and ps.scheduled == {}


class _State:
    def __init__(self, p: int, raw: bytes = b"") -> None:
        self.p, self.raw = p, raw

    def empty(self) -> bool:
        return not self.raw


def test_a_user_is_read_once_per_batch_and_an_emptied_one_is_deleted() -> None:
    reads: list[bytes] = []
    stored = {b"u1": b"one"}

    def get(key: bytes) -> bytes | None:
        reads.append(key)
        return stored.get(key)

    users = UserCache(3, get, lambda raw: _State(-1, raw), _State)
    assert users("u1").raw == b"one" and users("u1") is users("u1")
    fresh = users("u2")
    assert fresh.p == 3 and fresh.empty()
    assert reads == [b"u1", b"u2"]
    fresh.raw = b"two"
    users("u1").raw = b""
    assert users.writes(lambda st: st.raw) == [(b"u1", None), (b"u2", b"two")]


class _MemoryStore:
    """The memory store: one mapping for every partition."""

    def __init__(self, data: dict[bytes, bytes]) -> None:
        self.data = data


def test_stored_users_leave_out_meta_records_deletes_and_other_partitions() -> None:
    data = {b"u1": b"p1", b"u2": b"p2", meta_key(1): b"{}", b"u3": b""}
    access = TableAccess(_MemoryStore(data))
    assert access.shared

    def partition_of(raw: bytes) -> int:
        return int(raw[1:])

    assert list(stored_users(access, 1, partition_of)) == [(b"u1", b"p1")]
    assert list(stored_users(access, 2, partition_of)) == [(b"u2", b"p2")]


def test_meta_keys_cannot_be_user_ids() -> None:
    assert meta_key(7).startswith(b"\x00") and meta_key(7) != meta_key(17)
