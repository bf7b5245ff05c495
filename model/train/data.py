"""Event files to per-user sequences, and the temporal split every method is scored on."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.datasets import iter_events
from model.errors import ConfigError, DataError
from model.recommenders.base import Recommender
from model.types import SeqItem

__all__ = [
    "rank_cases",
    "Case", "EventLog", "Split", "cases_between", "events_to_log", "load_log", "temporal_split",
]


@dataclass
class EventLog:
    """Per-user event sequences in time order, from one or more files."""

    users: dict[str, list[SeqItem]] = field(default_factory=dict)
    n_events: int = 0
    t_min: int = 0
    t_max: int = 0
    categories: dict[str, str] = field(default_factory=dict)  # item -> its latest category


def events_to_log(events: Iterable[Mapping[str, Any]], max_events: int | None = None
                  ) -> EventLog:
    """Group event dicts ({"user_id", "item_id", "type", "ts" (ms)}) by user, sort by time."""
    users: dict[str, list[tuple[int, int, SeqItem]]] = {}
    categories: dict[str, str] = {}
    n = 0
    for e in events:
        item = e.get("item_id")
        user = e.get("user_id")
        if item is None or user is None:
            continue
        ts = int(e.get("ts", 0))
        cat = e.get("category")
        if cat is not None:
            categories[str(item)] = str(cat)
        users.setdefault(str(user), []).append(
            (ts, n, SeqItem(str(item), str(e.get("type", "view")), ts)))
        n += 1
        if max_events is not None and n >= max_events:
            break
    if n == 0:
        raise DataError("no usable events (need user_id, item_id and ts)")
    out = {u: [s for _, _, s in sorted(rows)] for u, rows in users.items()}
    t_min = min(s[0].ts_ms for s in out.values())
    t_max = max(s[-1].ts_ms for s in out.values())
    return EventLog(out, n, t_min, t_max, categories)


def load_log(path: Path, layout: str = "auto", max_events: int | None = None) -> EventLog:
    return events_to_log(iter_events(path, layout=layout), max_events)


@dataclass(frozen=True)
class Case:
    """Predict `target` after `history` (oldest first; the trigger event is last)."""

    history: tuple[SeqItem, ...]
    target: str


@dataclass
class Split:
    t_split: int
    train: dict[str, list[SeqItem]]
    test: list[Case]
    info: dict[str, Any]
    # item -> category of the items met in the training period (what a catalogue knew then)
    categories: dict[str, str] = field(default_factory=dict)


def cases_between(users: Mapping[str, Sequence[SeqItem]], t_from: int, t_to: int, max_hist: int,
                  max_cases: int | None, seed: int) -> tuple[list[Case], int]:
    """Every event in [t_from, t_to) with a previous event of the same user becomes a case,
    unless it repeats the trigger's item (never recommended, so not a fair target)."""
    cases: list[Case] = []
    for u in sorted(users):
        seq = users[u]
        for i in range(1, len(seq)):
            e = seq[i]
            if not t_from <= e.ts_ms < t_to or e.item_id == seq[i - 1].item_id:
                continue
            cases.append(Case(tuple(seq[max(0, i - max_hist): i]), e.item_id))
    total = len(cases)
    if max_cases is not None and total > max_cases:
        rng = random.Random(seed)
        cases = rng.sample(cases, max_cases)
    return cases, total


def temporal_split(log: EventLog, test_frac: float = 0.2, max_hist: int = 50,
                   max_cases: int | None = 5000, seed: int = 0,
                   test_log: EventLog | None = None) -> Split:
    """Last `test_frac` of the time range is test (or all of `test_log` when given).

    Train = every event before the split time. Test cases keep their user's full history
    (train-period events included), as a served model would see it.
    """
    if test_log is not None:
        t_split = test_log.t_min
        train = {u: [e for e in s if e.ts_ms < t_split] for u, s in log.users.items()}
        cases, total = cases_between(test_log.users, t_split, test_log.t_max + 1, max_hist,
                                     max_cases, seed)
        t_end = test_log.t_max
    else:
        if not 0.0 < test_frac < 1.0:
            raise ConfigError("test_frac must be in (0, 1)")
        # split on event count quantiles, robust to stray old timestamps
        stamps = sorted(e.ts_ms for s in log.users.values() for e in s)
        t_split = stamps[min(len(stamps) - 1, int(len(stamps) * (1.0 - test_frac)))]
        train = {u: [e for e in s if e.ts_ms < t_split] for u, s in log.users.items()}
        cases, total = cases_between(log.users, t_split, log.t_max + 1, max_hist, max_cases,
                                     seed)
        t_end = log.t_max
    train = {u: s for u, s in train.items() if s}
    n_train = sum(len(s) for s in train.values())
    if not cases:
        raise DataError("the test period has no next-item cases (too little data?)")
    info = {"kind": "temporal", "t_split_ms": t_split, "train_from_ms": log.t_min,
            "test_to_ms": t_end, "train_events": n_train, "test_cases": len(cases),
            "test_cases_total": total, "test_frac": None if test_log else test_frac,
            "users": len(log.users), "max_history": max_hist,
            "targets": "next event of the user in the test period whose item differs from "
                       "the trigger's"}
    known = {e.item_id for s in train.values() for e in s}
    cats = {i: c for i, c in log.categories.items() if i in known}
    return Split(t_split, train, cases, info, cats)


def rank_cases(rec: Recommender, cases: Sequence[Case], k: int, batch: int = 256
               ) -> list[list[str]]:
    """The top-k item ids `rec` gives each case, in batches, never the trigger's own item."""
    ranked: list[list[str]] = []
    for b in range(0, len(cases), batch):
        chunk = cases[b: b + batch]
        out = rec.recommend([c.history for c in chunk], k,
                            [frozenset({c.history[-1].item_id}) for c in chunk])
        ranked.extend([i for i, _ in row] for row in out)
    return ranked
