"""The simulator's world: built from real events, answers slates by appeal, taste and position."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from stream.devtools.sim_world import World, WorldConfig

SAMPLE = Path(__file__).resolve().parents[3] / "stream" / "sample" / "events.jsonl"


@pytest.fixture(scope="module")
def world() -> World:
    return World.from_events(SAMPLE, cfg=WorldConfig(catalogue=150))


def test_world_comes_from_the_event_file(world: World) -> None:
    assert len(world.items) == 150 and world.user_ids
    assert all(0 < world.appeal[i] < 1 for i in world.items)
    assert world.session_lengths and 0 <= world.cart_rate <= 0.9 and 0 <= world.buy_rate <= 0.9
    # the catalogue is the most frequent items, most frequent first
    counts = [world.counts[i] for i in world.items]
    assert counts == sorted(counts, reverse=True)


def test_users_prefer_their_own_items_and_the_top_of_the_slate(world: World) -> None:
    rng = random.Random(0)
    u = world.new_user(0, rng)
    own = next(iter(u.own))
    other = next(i for i in world.items if i not in u.own
                 and world.category.get(i) not in u.categories)
    p_own = world.engage_probability(u, own, 0)
    assert p_own > world.engage_probability(u, other, 0) * (
        world.appeal[other] / world.appeal[own])  # the boost, whatever the appeals
    assert world.engage_probability(u, own, 5) < p_own  # position decay


def test_responses_follow_engagement_probabilities(world: World) -> None:
    rng = random.Random(1)
    u = world.new_user(1, rng)
    slate = world.items[:5]
    n = 4000
    got = Counter(world.respond(u, slate, rng) is not None for _ in range(n))
    p_none = 1.0
    for rank, item in enumerate(slate):
        p_none *= 1 - world.engage_probability(u, item, rank)
    assert got[True] / n == pytest.approx(1 - p_none, abs=0.03)
    answers = [world.respond(u, slate, rng) for _ in range(500)]
    assert {a[0] for a in answers if a} <= {"click", "add_to_cart", "purchase"}
    assert all(a[1] in slate for a in answers if a)


def test_a_file_without_repeat_users_cannot_seed_users(tmp_path: Path) -> None:
    f = tmp_path / "e.jsonl"
    f.write_text("".join(
        f'{{"event_id":"e{i}","user_id":"u{i}","type":"view","item_id":"i{i % 3}",'
        f'"ts":{1_700_000_000_000 + i}}}\n' for i in range(30)))
    with pytest.raises(ValueError, match="3 or more"):
        World.from_events(f)


def test_a_session_ends_on_its_last_event_whatever_the_slate(world: World) -> None:
    rng = random.Random(2)
    u = world.new_user(2, rng)
    mine = sorted(u.own, key=lambda i: -world.engage_probability(u, i, 0))[:10]
    u.steps_left = 2
    assert sum(world.answer(u, mine, rng) is not None for _ in range(300)) > 0
    u.steps_left = 1  # the last event: the user leaves without reading the slate
    assert all(world.answer(u, mine, rng) is None for _ in range(300))
