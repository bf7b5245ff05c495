"""Non-neural recommenders: popularity and session co-visitation (item-kNN), repeat-aware."""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from model.recommenders.base import Ranked
from model.recommenders.counts import TYPE_WEIGHT, covisitation, split_sessions
from model.types import SeqItem

__all__ = ["CoVisitationRecommender", "PopularityRecommender", "TYPE_WEIGHT", "split_sessions"]


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


class CoVisitationRecommender:
    """Item-kNN on user sequences plus the user's own recent items.

    sim(i, j) = adjacency within `window` positions of a user's sequence, decayed with the
    time between the two events, / sqrt(n_i n_j) (`counts.covisitation`), top `keep` per
    item; `session_gap_ms` restricts pairs to sessions (the classic variant, which finds no
    pairs in logs whose events are days apart). A sequence scores candidates by the
    similarity to its last `last_n` distinct items (more weight to recent ones) plus
    `repeat_weight` times a recency- and type-weighted score of the items it already contains.
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
            repeat_weight: float = 1.0, **pairs: Any) -> CoVisitationRecommender:
        """`pairs`: how `counts.covisitation` counts (CLASSIC_COVISITATION: the old way)."""
        seqs = list(seqs)
        neighbours = covisitation(seqs, window=window, keep=keep, **pairs)
        n: Counter[str] = Counter()
        for seq in seqs:
            n.update({e.item_id for e in seq})
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
