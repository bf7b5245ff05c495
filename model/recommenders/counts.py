"""Item statistics counted from user sequences: popularity, trend, categories, co-visitation."""

from __future__ import annotations

import heapq
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from model.types import SeqItem

# How much a past event of each type says "the user may come back to this item".
TYPE_WEIGHT: dict[str, float] = {"view": 1.0, "click": 1.0, "add_to_cart": 2.0, "purchase": 0.5}

Neighbours = dict[str, list[tuple[str, float]]]
# The co-visitation this project served first: symmetric pair counts inside 30-minute sessions
CLASSIC_COVISITATION: dict[str, Any] = {"session_gap_ms": 30 * 60_000, "half_s": 0.0,
                                        "backward": 1.0, "by_distance": False}


def split_sessions(seq: Sequence[SeqItem], gap_ms: int) -> list[list[SeqItem]]:
    """The sequence cut wherever two events are more than `gap_ms` apart."""
    out: list[list[SeqItem]] = []
    prev: int | None = None
    for e in seq:
        if prev is None or e.ts_ms - prev > gap_ms:
            out.append([])
        out[-1].append(e)
        prev = e.ts_ms
    return out


def collapse_repeats(seq: Sequence[SeqItem]) -> list[SeqItem]:
    """Immediate repeats of an item as one visit (a view then a cart add of one item), the
    visit's first event kept."""
    return [e for i, e in enumerate(seq) if i == 0 or e.item_id != seq[i - 1].item_id]


def time_decay(gap_ms: int, half_s: float) -> float:
    """Weight of a pair `gap_ms` apart: 1 at no gap, 1/2 at `half_s`, then slowly down
    (1/sqrt), so pairs days apart still count, below those of one sitting. 0 disables it."""
    if half_s <= 0:
        return 1.0
    return 1.0 / math.sqrt(1.0 + 3.0 * max(0, gap_ms) / (1000.0 * half_s))


def covisitation(seqs: Iterable[Sequence[SeqItem]], *, window: int = 5, keep: int = 50,
                 session_gap_ms: int | None = None, half_s: float = 3600.0,
                 backward: float = 0.5, by_distance: bool = True) -> Neighbours:
    """Item-to-item neighbours from adjacency in each user's sequence.

    Every pair of visits at most `window` apart in one user's sequence counts 1 / distance
    (1 without `by_distance`) times `time_decay` of the time between them (`backward` times
    as much from the later item to the earlier one); sim(a, b) = count / sqrt(n_a n_b), top
    `keep` per item. With `session_gap_ms` only pairs inside one session count (the classic
    session co-visitation, CLASSIC_COVISITATION, which finds no pairs at all in logs whose
    events are days apart).
    """
    pair: defaultdict[str, defaultdict[str, float]] = defaultdict(lambda: defaultdict(float))
    n: Counter[str] = Counter()
    for seq in seqs:
        parts = [seq] if session_gap_ms is None else split_sessions(seq, session_gap_ms)
        for part in parts:
            visits = collapse_repeats(part)
            n.update({e.item_id for e in visits})
            for i, a in enumerate(visits):
                for d, b in enumerate(visits[i + 1: i + 1 + window], 1):
                    if a.item_id == b.item_id:
                        continue
                    w = time_decay(b.ts_ms - a.ts_ms, half_s) / (d if by_distance else 1)
                    pair[a.item_id][b.item_id] += w
                    pair[b.item_id][a.item_id] += w * backward
    out: Neighbours = {}
    for item, row in pair.items():
        sims = ((b, c / math.sqrt(n[item] * n[b])) for b, c in row.items())
        out[item] = heapq.nlargest(keep, sims, key=lambda kv: kv[1])
    return out


@dataclass
class ItemCounts:
    """What the candidate generator counts from training sequences (see `fit_counts`)."""

    items: list[str]  # the index: id i + 1 is items[i]; 0 means none
    count: list[float]  # events per item
    recent: list[float]  # events per item in the last `recent_frac` of the events
    users: list[float]  # distinct users per item (events / users: how often it is re-met)
    category: list[str | None]  # per item
    neighbours: Neighbours
    total: float
    total_recent: float


def fit_counts(seqs: Mapping[str, Sequence[SeqItem]], categories: Mapping[str, str],
               *, recent_frac: float = 0.1, **covis: float) -> ItemCounts:
    """Counts over every event of `seqs` (the trend window is the last `recent_frac` of the
    events by time) plus `covisitation(seqs.values(), **covis)`."""
    count: Counter[str] = Counter()
    users: Counter[str] = Counter()
    stamps: list[int] = []
    for s in seqs.values():
        count.update(e.item_id for e in s)
        users.update({e.item_id for e in s})
        stamps.extend(e.ts_ms for e in s)
    stamps.sort()
    t_recent = stamps[int(len(stamps) * (1.0 - recent_frac))] if stamps else 0
    recent: Counter[str] = Counter(e.item_id for s in seqs.values() for e in s
                                   if e.ts_ms >= t_recent)
    items = sorted(count, key=lambda i: (-count[i], i))
    nb = covisitation(seqs.values(), **covis)  # type: ignore[arg-type]
    return ItemCounts(items, [float(count[i]) for i in items], [float(recent[i]) for i in items],
                      [float(users[i]) for i in items], [categories.get(i) for i in items], nb,
                      float(sum(count.values())), float(sum(recent.values())))
