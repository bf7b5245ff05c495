"""ItemCatalog: item -> category as the stream has shown it, bounded.

Recommenders rank item ids; the candidates of a pool carry no category. The exploring
predictor learns each item's category from the events it scores (the trigger event names its
item's category when the app sends one) and logs the categories of the pool and of the
user's recent items with every decision, so the reranker can learn category tastes from
feedback and the trainer sees exactly what the worker saw.

Bounded: past `capacity` items the oldest-learned go first (insertion order; an item seen
again with a new category moves to the end). Per process and in memory: a restarted worker
starts empty and relearns from the next events; several workers each learn from the events
of their own partitions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from model.errors import ConfigError

__all__ = ["DEFAULT_CAPACITY", "ItemCatalog"]

DEFAULT_CAPACITY = 200_000


class ItemCatalog:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ConfigError("catalog capacity must be at least 1")
        self.capacity = capacity
        self._cat: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._cat)

    def observe(self, item: str, category: str | None) -> None:
        if not category:
            return
        cat = self._cat
        old = cat.get(item)
        if old == category:
            return
        if old is not None:
            del cat[item]
        elif len(cat) >= self.capacity:
            del cat[next(iter(cat))]
        cat[item] = category

    def observe_all(self, pairs: Iterable[tuple[str, str | None]]) -> None:
        for item, category in pairs:
            self.observe(item, category)

    def get(self, item: str) -> str | None:
        return self._cat.get(item)

    def lookup(self, items: Sequence[str]) -> tuple[str | None, ...]:
        return tuple(map(self._cat.get, items))
