"""The TTL sweep walks the whole RocksDB store over successive bounded calls."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from rocksdict import Options, Rdict

from stream.state.features import FeatureConfig, UserState
from stream.state.table import SweepCursor, TableAccess
from stream.worker.ingest import IngestAgent

CFG = FeatureConfig(user_ttl_s=3600)
OFFSET_KEY = b"__faust\0offset__"


class _RocksStore:
    """What TableAccess reads and deletes of Faust's RocksDB store (rocksdict, raw mode)."""

    use_rocksdict = True
    offset_key = OFFSET_KEY

    def __init__(self, root: Path, partitions: int) -> None:
        self._key_index: dict[bytes, int] = {}
        self._dbs = {p: Rdict(str(root / f"p{p}"), options=Options(raw_mode=True))
                     for p in range(partitions)}

    def _db_for_partition(self, partition: int) -> Any:
        return self._dbs[partition]

    def __delitem__(self, key: bytes) -> None:  # Faust's store deletes from the key's partition
        self._dbs[self._key_index.pop(key)].delete(key)

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()


def _state(user: str, seen_ms: int) -> bytes:
    st = UserState(user, len(CFG.windows_s))
    st.seen_ms = seen_ms
    return st.to_bytes()


def _fill(store: _RocksStore, idle: int, active: list[str], now_ms: int) -> set[bytes]:
    """`idle` users seen two TTLs ago and the `active` ones, spread over the partitions."""
    access = TableAccess(store)
    old = now_ms - 2 * CFG.user_ttl_s * 1000
    parts = len(store._dbs)
    by_part: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in range(parts)}
    for i in range(idle):
        by_part[i % parts].append((f"idle{i:06d}".encode(), _state(f"idle{i:06d}", old)))
    for i, user in enumerate(active):
        by_part[i % parts].append((user.encode(), _state(user, now_ms)))
    for p, items in by_part.items():
        access.write(p, items)
        store._dbs[p][OFFSET_KEY] = b"42"  # the store's own bookkeeping: never swept
    return {k for items in by_part.values() for k, _ in items if k.startswith(b"idle")}


def _sweeper(store: _RocksStore, sent: list[tuple[str, bytes, Any, int]]) -> Any:
    """Just what IngestAgent.sweep_expired uses of the agent."""

    async def send(topic: str, key: bytes, value: Any, partition: int, *_: Any) -> Any:
        sent.append((topic, key, value, partition))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    return SimpleNamespace(
        _last_sweep=0.0, _sweep_cursor=SweepCursor(), features=CFG,
        table=SimpleNamespace(data=store, changelog_topic=SimpleNamespace(
            get_topic_name=lambda: "features-changelog")),
        app=SimpleNamespace(producer=SimpleNamespace(send=send)))


def test_every_idle_user_expires_over_successive_sweeps_and_active_ones_stay(
        tmp_path: Path) -> None:
    now_ms = int(time.time() * 1000)
    store = _RocksStore(tmp_path, partitions=4)
    # more active users than one sweep's budget, sorting before the idle ones: a sweep that
    # starts over from the first keys each time never reaches most idle users
    active = [f"active{i:06d}" for i in range(21_000)] + ["zz-active"]
    idle = _fill(store, 5_000, active, now_ms)
    sent: list[tuple[str, bytes, Any, int]] = []
    agent = _sweeper(store, sent)
    deleted = [asyncio.run(IngestAgent.sweep_expired(agent, 20_000)) for _ in range(3)]
    assert sum(deleted) == len(idle), deleted  # every idle user, each once
    assert deleted[2] == 0
    assert {key for _, key, _, _ in sent} == idle  # a tombstone on the changelog for each
    assert all(value is None for _, _, value, _ in sent)
    access = TableAccess(store)
    left = {k for p in range(4) for k, _ in access.items(p)}
    assert left == {u.encode() for u in active}
    assert all(store._dbs[p][OFFSET_KEY] == b"42" for p in range(4))
    store.close()


def test_the_cursor_wraps_around_and_sees_each_key_once_per_round(tmp_path: Path) -> None:
    store = _RocksStore(tmp_path, partitions=3)
    access = TableAccess(store)
    keys = {p: [f"p{p}k{i:03d}".encode() for i in range(p * 7 + 5)] for p in range(3)}
    for p, ks in keys.items():
        access.write(p, [(k, b"v") for k in ks])
    total = sum(len(ks) for ks in keys.values())
    cursor = SweepCursor()
    walked: list[tuple[int, bytes]] = []
    while len(walked) < 3 * total:
        walked += [(p, k) for p, k, _ in cursor.walk(access, budget=6)]
    for lap in range(3):
        seen = walked[lap * total:(lap + 1) * total]
        assert sorted(seen) == sorted((p, k) for p, ks in keys.items() for k in ks), lap
    store.close()
