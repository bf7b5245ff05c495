"""Synthetic users for `lamstream simulate`, with tastes and item appeal drawn from real events.

From an event file (any layout `lamstream produce` reads; default the Taobao sample):
  * the catalogue: the `catalogue` most frequent items;
  * item appeal: how often an item that was seen got engaged with (clicked, carted, bought:
    anything but a view) in the real data, Beta-smoothed towards the catalogue's mean;
  * tastes: a synthetic user is a real user's history (their catalogue items, in order, and
    their categories); recommended items of a category they used are `taste_boost` times more
    appealing, items they really used `own_boost` times;
  * session lengths: drawn from the real sessions (30-minute gap), clamped.
A recommended slate is read top to bottom; each item is engaged with with probability
appeal x boost x position decay x `engage_scale`, the first success wins, and goes as far
down the funnel (click, add to cart, purchase) as the real data's rates say. No faust, no
Kafka.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from model.datasets import iter_events
from stream.errors import UsageError

SESSION_GAP_MS = 30 * 60_000


@dataclass(frozen=True)
class WorldConfig:
    catalogue: int = 400
    max_events: int = 200_000
    taste_boost: float = 3.0
    own_boost: float = 6.0
    position_decay: float = 0.85
    engage_scale: float = 0.3  # multiplies every engagement probability
    min_session: int = 4
    max_session: int = 40


@dataclass(slots=True)
class SimUser:
    user_id: str
    path: list[str]  # their real catalogue items, in order: what they browse unprompted
    categories: frozenset[str]
    own: frozenset[str]
    steps_left: int
    pos: int = 0
    pending: tuple[str, str] | None = None  # (type, item) to emit next

    def next_view(self) -> str:
        item = self.path[self.pos % len(self.path)]
        self.pos += 1
        return item


class World:
    def __init__(self, cfg: WorldConfig, items: list[str], appeal: dict[str, float],
                 category: dict[str, str], histories: dict[str, list[str]],
                 session_lengths: list[int], cart_rate: float, buy_rate: float,
                 counts: dict[str, int]) -> None:
        self.cfg = cfg
        self.items = items
        self.appeal = appeal
        self.category = category
        self.histories = histories
        self.session_lengths = session_lengths
        self.cart_rate = cart_rate
        self.buy_rate = buy_rate
        self.counts = counts
        self.user_ids = sorted(u for u, h in histories.items() if len(set(h)) >= 3)
        if not self.user_ids:
            raise UsageError("the event file has no user with 3 or more catalogue items: "
                             "it cannot seed synthetic users")

    @classmethod
    def from_events(cls, path: Path, layout: str = "auto",
                    cfg: WorldConfig | None = None) -> World:
        cfg = cfg or WorldConfig()
        events = []
        for n, e in enumerate(iter_events(path, layout)):
            if n >= cfg.max_events:
                break
            events.append(e)
        if not events:
            raise UsageError(f"{path}: no events")
        count = Counter(str(e["item_id"]) for e in events)
        items = [i for i, _ in count.most_common(cfg.catalogue)]
        cat_set = set(items)
        seen: Counter[str] = Counter()
        engaged: Counter[str] = Counter()
        category: dict[str, str] = {}
        histories: defaultdict[str, list[tuple[int, str]]] = defaultdict(list)
        by_user_ts: defaultdict[str, list[int]] = defaultdict(list)
        types: Counter[str] = Counter()
        for e in events:
            item, user, ts = str(e["item_id"]), str(e["user_id"]), int(e["ts"])
            types[str(e["type"])] += 1
            by_user_ts[user].append(ts)
            if item not in cat_set:
                continue
            seen[item] += 1
            if e["type"] != "view":
                engaged[item] += 1
            if e.get("category"):
                category[item] = str(e["category"])
            histories[user].append((ts, item))
        mean = (sum(engaged.values()) + 1) / (sum(seen.values()) + 2)
        prior = 20.0
        appeal = {i: (engaged[i] + prior * mean) / (seen[i] + prior) for i in items}
        lengths = []
        for ts_list in by_user_ts.values():
            ts_list.sort()
            run = 1
            for a, b in zip(ts_list, ts_list[1:], strict=False):
                if b - a > SESSION_GAP_MS:
                    lengths.append(run)
                    run = 0
                run += 1
            lengths.append(run)
        views = max(types["view"], 1)
        cart_rate = min(0.9, (types["add_to_cart"] + types["purchase"]) / views * 3)
        buy_rate = min(0.9, types["purchase"] / max(types["add_to_cart"] + types["purchase"], 1))
        hist = {u: [i for _, i in sorted(h)] for u, h in histories.items()}
        return cls(cfg, items, appeal, category, hist, lengths or [10], cart_rate, buy_rate,
                   {i: count[i] for i in items})

    # -- users --------------------------------------------------------------------------
    def new_user(self, n: int, rng: random.Random) -> SimUser:
        real = rng.choice(self.user_ids)
        path = self.histories[real]
        length = rng.choice(self.session_lengths)
        length = max(self.cfg.min_session, min(self.cfg.max_session, length))
        cats = frozenset(self.category[i] for i in path if i in self.category)
        return SimUser(f"sim-{n}", path, cats, frozenset(path), length,
                       pos=rng.randrange(len(path)))

    def engage_probability(self, user: SimUser, item: str, rank: int) -> float:
        p = self.appeal.get(item, 0.0) * self.cfg.engage_scale
        if item in user.own:
            p *= self.cfg.own_boost
        elif self.category.get(item) in user.categories:
            p *= self.cfg.taste_boost
        return min(0.95, p * self.cfg.position_decay ** rank)

    def answer(self, user: SimUser, slate: Sequence[str], rng: random.Random
               ) -> tuple[str, str] | None:
        """`respond`, except on the session's last event: the user leaves without reading
        the slate, so a session lasts its drawn length whatever the slates show (were
        engaged users to stay on, the policy would choose who is around, and no logged
        estimate could account for it)."""
        return self.respond(user, slate, rng) if user.steps_left > 1 else None

    def respond(self, user: SimUser, slate: Sequence[str], rng: random.Random
                ) -> tuple[str, str] | None:
        """What the slate earns: None, or (type, item) with the deepest step of the funnel
        the user went (click, add_to_cart or purchase), emitted as the user's next event."""
        for rank, item in enumerate(slate):
            if rng.random() < self.engage_probability(user, item, rank):
                if rng.random() >= self.cart_rate:
                    return "click", item
                if rng.random() >= self.buy_rate:
                    return "add_to_cart", item
                return "purchase", item
        return None
