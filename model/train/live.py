"""What a live replay is scored against: next-different-item targets and the simple rule.

A live worker that replays a file in time order publishes one recommendation per view/click;
each is scored against the user's next item that differs from the trigger's. The bar is the
strongest simple rule on re-consumption logs, run online over the same events in the same
order: the user's own history first (most recent first), then the co-visitation neighbours
of the trigger (consecutive items of every user so far, counted).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

__all__ = ["hit_rate", "history_then_covisitation", "next_different_targets"]


def next_different_targets(events: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """event id -> the next item of the same user that differs from this event's item (events
    in time order); events with no such later item have no target."""
    by_user: dict[str, list[Mapping[str, Any]]] = {}
    for e in events:
        by_user.setdefault(str(e["user_id"]), []).append(e)
    out: dict[str, str] = {}
    for seq in by_user.values():
        later_item: str | None = None  # the item of the event after this one
        later_target: str | None = None  # that event's own target
        for e in reversed(seq):
            item = str(e["item_id"])
            # the next event's item when it differs, else (a repeat) that event's target
            target = later_item if later_item != item else later_target
            if target is not None:
                out[str(e["event_id"])] = target
            later_item, later_target = item, target
    return out


def history_then_covisitation(events: Sequence[Mapping[str, Any]], k: int,
                              recommend_on: Collection[str]) -> dict[str, list[str]]:
    """event id -> the rule's top `k` for every event of a type in `recommend_on`, each ranked
    from the events before it only (online, in the given time order); the trigger's own item
    is never recommended, as the worker never does."""
    history: dict[str, list[str]] = {}
    covis: dict[str, dict[str, int]] = {}
    out: dict[str, list[str]] = {}
    for e in events:
        user, item = str(e["user_id"]), str(e["item_id"])
        mine = history.setdefault(user, [])
        if e.get("type", "view") in recommend_on:
            out[str(e["event_id"])] = _rank(item, mine, covis.get(item, {}), k)
        if mine and mine[-1] != item:
            nb = covis.setdefault(mine[-1], {})
            nb[item] = nb.get(item, 0) + 1
            back = covis.setdefault(item, {})
            back[mine[-1]] = back.get(mine[-1], 0) + 1
        mine.append(item)
    return out


def _rank(trigger: str, mine: Sequence[str], neighbours: Mapping[str, int], k: int
          ) -> list[str]:
    picked: list[str] = []
    seen = {trigger}
    for it in reversed(mine):
        if it not in seen:
            seen.add(it)
            picked.append(it)
            if len(picked) >= k:
                return picked
    for it, _ in sorted(neighbours.items(), key=lambda kv: (-kv[1], kv[0])):
        if it not in seen:
            seen.add(it)
            picked.append(it)
            if len(picked) >= k:
                break
    return picked


def hit_rate(ranked: Mapping[str, Sequence[str]], targets: Mapping[str, str], k: int,
             cases: Collection[str] | None = None) -> tuple[float, int]:
    """(HR@k, cases) over the event ids in `cases` (default: every ranked event with a
    target)."""
    ids = [i for i in (ranked if cases is None else cases) if i in targets and i in ranked]
    if not ids:
        return 0.0, 0
    hits = sum(1 for i in ids if targets[i] in ranked[i][:k])
    return hits / len(ids), len(ids)
