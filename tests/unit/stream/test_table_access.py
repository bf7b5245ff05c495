"""TableAccess writes a batch's states straight into the partition's RocksDB database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rocksdict import Options, Rdict

from stream.state.table import TableAccess


class _RocksStore:
    """What TableAccess uses of Faust's RocksDB store (rocksdict driver, raw mode)."""

    use_rocksdict = True

    def __init__(self, root: Path) -> None:
        self.root = root
        self._dbs: dict[int, Any] = {}
        self._key_index: dict[bytes, int] = {}

    def _db_for_partition(self, partition: int) -> Any:
        db = self._dbs.get(partition)
        if db is None:
            db = self._dbs[partition] = Rdict(str(self.root / f"p{partition}"),
                                              options=Options(raw_mode=True))
        return db


def test_a_batch_lands_in_its_partition_database_as_raw_bytes(tmp_path: Path) -> None:
    store = _RocksStore(tmp_path)
    access = TableAccess(store)
    assert access.batched
    items = [(f"u{i}".encode(), b"\x00state\xff" + bytes([i])) for i in range(50)]
    access.write(3, items)
    access.write(5, [(b"other", b"x")])
    db = store._db_for_partition(3)
    assert [db.get(k) for k, _ in items] == [v for _, v in items]
    assert db.get(b"other") is None and store._db_for_partition(5).get(b"other") == b"x"
    assert store._key_index[b"u7"] == 3 and store._key_index[b"other"] == 5
    read = access.reader(3)
    assert read(b"u49") == items[49][1]
    access.apply(3, [(b"u1", None), (b"u2", b"new")])  # a delete and an overwrite
    assert db.get(b"u1") is None and db.get(b"u2") == b"new"
