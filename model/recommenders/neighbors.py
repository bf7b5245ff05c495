"""Non-neural recommenders: popularity and session co-visitation (item-kNN), repeat-aware."""

from __future__ import annotations

import heapq
import json
import math
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from model.recommenders.base import Ranked
from model.types import SeqItem

__all__ = ["CoVisitationRecommender", "PopularityRecommender", "TYPE_WEIGHT", "split_sessions"]

# How much a past event of each type says "the user may come back to this item".
TYPE_WEIGHT: dict[str, float] = {"view": 1.0, "click": 1.0, "add_to_cart": 2.0, "purchase": 0.5}


class PopularityRecommender:
    """The most frequent items of the training data, the same list for everyone."""

    method = "popularity"

    def __init__(self, counts: dict[str, int] | None = None, keep: int = 1000) -> None:
        top = heapq.nlargest(keep, (counts or {}).items(), key=lambda kv: (kv[1], kv[0]))
        self.top: list[tuple[str, int]] = top
        self._total = max(1, sum(c for _, c in top))

    @classmethod
    def fit(cls, seqs: Iterable[Sequence[SeqItem]], keep: int = 1000) -> PopularityRecommender:
        c: Counter[str] = Counter()
        for s in seqs:
            c.update(e.item_id for e in s)
        return cls(dict(c), keep)

    def recommend(self, seqs: Sequence[Sequence[SeqItem]], k: int,
                  exclude: Sequence[Collection[str]]) -> list[Ranked]:
        out: list[Ranked] = []
        for ex in exclude:
            row: Ranked = []
            for item, c in self.top:
                if item not in ex:
                    row.append((item, c / self._total))
                    if len(row) >= k:
                        break
            out.append(row)
        return out

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "popularity.json").write_text(json.dumps(self.top), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> PopularityRecommender:
        top = json.loads((directory / "popularity.json").read_text(encoding="utf-8"))
        p = cls()
        p.top = [(str(i), int(c)) for i, c in top]
        p._total = max(1, sum(c for _, c in p.top))
        return p


def split_sessions(seq: Sequence[SeqItem], gap_ms: int) -> list[list[SeqItem]]:
    out: list[list[SeqItem]] = []
    prev: int | None = None
    for e in seq:
        if prev is None or e.ts_ms - prev > gap_ms:
            out.append([])
        out[-1].append(e)
        prev = e.ts_ms
    return out


class CoVisitationRecommender:
    """Item-kNN on sessions plus the user's own recent items.

    sim(i, j) = co-occurrences within `window` positions of a session / sqrt(n_i n_j) (cosine),
    top `neighbours` kept per item. A sequence scores candidates by the similarity to its last
    `last_n` distinct items (more weight to recent ones) plus `repeat_weight` times a recency-
    and type-weighted score of the items it already contains.
    """

    method = "covisitation"

    def __init__(self, neighbours: dict[str, list[tuple[str, float]]] | None = None,
                 popular: list[str] | None = None, repeat_weight: float = 1.0,
                 last_n: int = 10) -> None:
        self.neighbours = neighbours or {}
        self.popular = popular or []
        self.repeat_weight = repeat_weight
        self.last_n = last_n

    @classmethod
    def fit(cls, seqs: Iterable[Sequence[SeqItem]], window: int = 5, keep: int = 50,
            session_gap_ms: int = 30 * 60_000, repeat_weight: float = 1.0
            ) -> CoVisitationRecommender:
        pair: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
        n: Counter[str] = Counter()
        for seq in seqs:
            for sess in split_sessions(seq, session_gap_ms):
                items = [e.item_id for e in sess]
                # collapse immediate repeats (view then cart of one item is one visit)
                items = [it for i, it in enumerate(items) if i == 0 or it != items[i - 1]]
                n.update(set(items))
                for i, a in enumerate(items):
                    for b in items[i + 1: i + 1 + window]:
                        if a != b:
                            pair[a][b] += 1.0
                            pair[b][a] += 1.0
        neighbours: dict[str, list[tuple[str, float]]] = {}
        for a, row in pair.items():
            sims = ((b, c / math.sqrt(n[a] * n[b])) for b, c in row.items())
            neighbours[a] = heapq.nlargest(keep, sims, key=lambda kv: kv[1])
        popular = [i for i, _ in n.most_common(200)]
        return cls(neighbours, popular, repeat_weight)

    def score(self, seq: Sequence[SeqItem]) -> dict[str, float]:
        scores: defaultdict[str, float] = defaultdict(float)
        seen: set[str] = set()
        r = 0
        for e in reversed(seq):
            if e.item_id in seen:
                continue
            seen.add(e.item_id)
            w = 1.0 / (1.0 + r)
            for b, s in self.neighbours.get(e.item_id, ()):
                scores[b] += w * s
            r += 1
            if r >= self.last_n:
                break
        if self.repeat_weight > 0:
            for age, e in enumerate(reversed(seq[-100:])):
                scores[e.item_id] += (self.repeat_weight * TYPE_WEIGHT.get(e.event_type, 1.0)
                                      / (1.0 + age / 5.0))
        return scores

    def recommend(self, seqs: Sequence[Sequence[SeqItem]], k: int,
                  exclude: Sequence[Collection[str]]) -> list[Ranked]:
        out: list[Ranked] = []
        for seq, ex in zip(seqs, exclude, strict=True):
            scores = self.score(seq)
            top = heapq.nlargest(k + len(ex), scores.items(), key=lambda kv: kv[1])
            row = [(i, s) for i, s in top if i not in ex][:k]
            if len(row) < k:  # fill with popular items below every real score
                have = {i for i, _ in row}
                for rank, i in enumerate(self.popular):
                    if i not in have and i not in ex:
                        row.append((i, -1.0 - rank))
                        if len(row) >= k:
                            break
            out.append(row)
        return out

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        data = {"neighbours": self.neighbours, "popular": self.popular,
                "repeat_weight": self.repeat_weight, "last_n": self.last_n}
        (directory / "covisitation.json").write_text(json.dumps(data), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> CoVisitationRecommender:
        d = json.loads((directory / "covisitation.json").read_text(encoding="utf-8"))
        nb = {str(a): [(str(b), float(s)) for b, s in row] for a, row in d["neighbours"].items()}
        return cls(nb, [str(i) for i in d["popular"]], float(d["repeat_weight"]),
                   int(d["last_n"]))
