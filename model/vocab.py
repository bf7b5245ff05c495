"""Open-ended string item vocabulary: grows with new items, bounded, evicts rare items."""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterable, Sequence
from itertools import repeat
from pathlib import Path

from model.errors import ConfigError, DataError

__all__ = ["ItemVocab", "PAD", "RESERVED", "UNK"]

PAD = 0
UNK = 1
RESERVED = 2  # ids below this are never items


class ItemVocab:
    """Maps item strings to dense ids that never change while the item stays known.

    Id 0 is padding and id 1 the shared bucket for unknown (or evicted) items. When the
    vocabulary is at capacity, adding a new item first evicts the rarest tenth of the items; their
    ids go to a free list and are reused, so a model that grows its tables with the vocabulary
    must reset those rows (see `take_recycled`).
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ConfigError("capacity must be >= 1")
        self.capacity = capacity
        self._ids: dict[str, int] = {}
        self._items: list[str | None] = ["<pad>", "<unk>"]
        self._counts: list[int] = [0, 0]
        self._free: list[int] = []
        self._recycled: list[int] = []

    def __len__(self) -> int:
        """Number of known items (not counting padding and the unknown bucket)."""
        return len(self._ids)

    @property
    def size(self) -> int:
        """Rows an embedding table needs: highest id + 1."""
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def id(self, item: str) -> int:
        """The id of a known item, UNK otherwise; never grows the vocabulary."""
        return self._ids.get(item, UNK)

    def ids(self, items: Iterable[str]) -> list[int]:
        return list(map(self._ids.get, items, repeat(UNK)))

    def id_array(self, items: Iterable[str]) -> array[int]:
        """`ids` as an int64 array, filled in one C-level pass (torch.frombuffer reads it)."""
        return array("q", map(self._ids.get, items, repeat(UNK)))

    def item(self, idx: int) -> str | None:
        """The item string behind an id, None for padding, unknown or a free slot."""
        if idx < RESERVED or idx >= len(self._items):
            return None
        return self._items[idx]

    def item_table(self) -> Sequence[str | None]:
        """Item string by id (ids below RESERVED hold placeholders, free slots None): a live
        read-only view for readers that look up many ids at once."""
        return self._items

    def count(self, item: str) -> int:
        idx = self._ids.get(item)
        return 0 if idx is None else self._counts[idx]

    def add(self, item: str, count: int = 1) -> int:
        """Count an occurrence of item, adding it if new; returns its id."""
        idx = self._ids.get(item)
        if idx is not None:
            self._counts[idx] += count
            return idx
        if len(self._ids) >= self.capacity:
            self._evict()
        if self._free:
            idx = self._free.pop()
            self._items[idx] = item
            self._counts[idx] = count
            self._recycled.append(idx)
        else:
            idx = len(self._items)
            self._items.append(item)
            self._counts.append(count)
        self._ids[item] = idx
        return idx

    def add_all(self, items: Iterable[str]) -> None:
        for it in items:
            self.add(it)

    def _evict(self) -> None:
        # Evict in bulk so a stream of new items costs O(log n) amortised per item, not a sort.
        n = max(1, len(self._ids) // 10)
        victims = sorted(self._ids.items(), key=lambda kv: (self._counts[kv[1]], kv[1]))[:n]
        for item, idx in victims:
            del self._ids[item]
            self._items[idx] = None
            self._counts[idx] = 0
            self._free.append(idx)
        self._free.sort(reverse=True)  # reuse low ids first: keeps tables compact

    def take_recycled(self) -> list[int]:
        """Ids that were reused for new items since the last call (rows to re-initialise)."""
        out, self._recycled = self._recycled, []
        return out

    def known_ids(self) -> list[int]:
        return sorted(self._ids.values())

    def to_dict(self) -> dict[str, object]:
        return {"capacity": self.capacity, "items": self._items[RESERVED:],
                "counts": self._counts[RESERVED:]}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ItemVocab:
        cap = data["capacity"]
        items = data["items"]
        counts = data["counts"]
        if not isinstance(cap, int) or not isinstance(items, list) or not isinstance(counts, list):
            raise DataError("malformed vocabulary")
        v = cls(cap)
        for i, (item, c) in enumerate(zip(items, counts, strict=True)):
            idx = i + RESERVED
            v._items.append(item)
            v._counts.append(int(c))
            if item is None:
                v._free.append(idx)
            else:
                v._ids[str(item)] = idx
        v._free.sort(reverse=True)
        return v

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> ItemVocab:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise DataError(f"{path}: not a vocabulary")
        return cls.from_dict(data)
