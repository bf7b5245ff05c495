"""The per-user feature state: dedupe, event-time windows, lateness, sessions, TTL, persistence."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.types import EVENT_TYPES, FEATURE_NAMES
from stream.errors import StateError
from stream.schemas import Event
from stream.state.features import ApplyResult, FeatureConfig, UserState

DAY = 86_400_000
HOUR = 3_600_000
T0 = 19_700 * DAY  # 2023-12-09, a multiple of every tile size used below
NOW = 1_800_000_000_000  # processing time; only the TTL reads it
CFG = FeatureConfig()
ONE_MIN = FeatureConfig(windows_s=(60,), window_buckets=12, allowed_lateness_s=60)  # 5 s tiles


@dataclass(frozen=True)
class Ev:
    """An event as the feature state sees it (stream.schemas.Event has the same fields)."""

    event_id: str
    type: str = "view"
    item_id: str = "i1"
    ts: int = T0
    category: str | None = None
    price: float | None = None
    quantity: int | None = None
    device_id: str | None = None
    ip: str | None = None
    session_id: str | None = None


def fold(events: list[Ev], cfg: FeatureConfig = CFG, now_ms: int = NOW) -> UserState:
    st_ = UserState("u1", len(cfg.windows_s))
    for ev in events:
        st_.apply(ev, cfg, now_ms)
    return st_


def counts_1m(state: UserState, cfg: FeatureConfig = ONE_MIN) -> dict[str, int]:
    return {k: v for k, v in state.snapshot(cfg, NOW)["windows"]["1m"].items()
            if k in EVENT_TYPES}


# --- lifetime counts and dedupe ---------------------------------------------------------

def test_lifetime_counts_per_type_and_total() -> None:
    types = ["view", "view", "click", "add_to_cart", "purchase", "view"]
    state = fold([Ev(f"e{i}", type=t, ts=T0 + i) for i, t in enumerate(types)])
    snap = state.snapshot(CFG, NOW)
    assert snap["events_total"] == 6
    assert snap["counts"] == {"view": 3, "click": 1, "add_to_cart": 1, "purchase": 1}
    assert snap["user_id"] == "u1"


def test_a_duplicate_changes_nothing_but_the_duplicates_counter() -> None:
    state = fold([Ev("e1", ts=T0, device_id="d1"),
                  Ev("e2", type="purchase", ts=T0 + 1000, price=5.0, device_id="d1")])
    before = state.snapshot(CFG, NOW)
    before_features = state.numeric_features(CFG, Ev("e2"))
    # a replay of e1, even with a different payload, is the same event
    res = state.apply(Ev("e1", type="purchase", item_id="other", ts=T0 + 5 * HOUR, price=99.0,
                         device_id="d2", ip="1.2.3.4", session_id="s9"), CFG, NOW + 1000)
    assert res == ApplyResult(duplicate=True, late=False, expired_reset=False)
    after = state.snapshot(CFG, NOW)
    assert after.pop("duplicates") == before.pop("duplicates") + 1
    assert after == before
    assert state.seen_ms == NOW  # a duplicate is not activity for the TTL either
    assert state.numeric_features(CFG, Ev("e2")) == before_features


def test_dedupe_remembers_only_the_last_dedupe_ids_event_ids() -> None:
    cfg = replace(CFG, dedupe_ids=3)
    state = fold([Ev(f"e{i}", ts=T0 + i) for i in range(4)], cfg)
    assert state.apply(Ev("e1", ts=T0 + 9), cfg, NOW).duplicate  # among the last 3
    assert not state.apply(Ev("e0", ts=T0 + 9), cfg, NOW).duplicate  # forgotten: counts again
    assert state.total == 5


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), dup_frac=st.floats(0, 1), seed=st.integers(0, 2**32 - 1))
def test_a_shuffled_stream_with_duplicates_counts_each_event_id_once(
        n: int, dup_frac: float, seed: int) -> None:
    rnd = random.Random(seed)
    events = [Ev(f"e{i}", type=rnd.choice(EVENT_TYPES), item_id=f"i{rnd.randrange(9)}",
                 ts=T0 + rnd.randrange(10 * HOUR)) for i in range(n)]
    stream = events + rnd.sample(events, int(n * dup_frac))
    rnd.shuffle(stream)
    state = fold(stream)
    offline = Counter(e.type for e in {e.event_id: e for e in events}.values())
    snap = state.snapshot(CFG, NOW)
    assert snap["counts"] == {t: offline[t] for t in EVENT_TYPES}
    assert snap["events_total"] == n
    assert snap["duplicates"] == len(stream) - n


# --- event-time tiled windows -----------------------------------------------------------

def test_window_covers_the_tiles_ending_at_the_latest_event_tile() -> None:
    # 60 s in 12 tiles of 5 s: at ts in tile c the window is tiles c-11 .. c
    inside = fold([Ev("a", ts=T0 + 5_000), Ev("b", ts=T0 + 64_999)], ONE_MIN)
    assert counts_1m(inside)["view"] == 2  # tiles 1 and 12
    outside = fold([Ev("a", ts=T0 + 4_999), Ev("b", ts=T0 + 60_000)], ONE_MIN)
    assert counts_1m(outside)["view"] == 1  # tile 0 left when tile 12 began
    just_in = fold([Ev("a", ts=T0), Ev("b", ts=T0 + 59_999)], ONE_MIN)
    assert counts_1m(just_in)["view"] == 2


def test_windows_slide_with_event_time_not_with_arrival() -> None:
    state = fold([Ev(f"e{i}", type="click", ts=T0 + i * 10_000) for i in range(12)], ONE_MIN)
    # events at 0, 10 s, ..., 110 s; latest tile is 22, so tiles 11..22 = 55 s .. 115 s
    assert counts_1m(state)["click"] == 6
    assert state.snapshot(ONE_MIN, NOW + 10 * DAY)["windows"]["1m"]["click"] == 6
    state.apply(Ev("far", ts=T0 + 10 * HOUR), ONE_MIN, NOW)
    assert counts_1m(state) == {"view": 1, "click": 0, "add_to_cart": 0, "purchase": 0}


def test_default_windows_count_1m_1h_24h_separately() -> None:
    events = [Ev("d", ts=T0), Ev("h", ts=T0 + 20 * HOUR), Ev("m", ts=T0 + 23 * HOUR + 30 * 60_000),
              Ev("now", ts=T0 + 23 * HOUR + 59 * 60_000)]
    snap = fold(events).snapshot(CFG, NOW)
    assert [snap["windows"][w]["view"] for w in ("1m", "1h", "24h")] == [1, 2, 4]


def test_in_order_out_of_order_and_late_events_at_the_lateness_boundary() -> None:
    cfg = replace(ONE_MIN, windows_s=(600,))  # 10 min window, 60 s lateness
    state = fold([Ev("a", ts=T0 + 300_000)], cfg)
    on_time = state.apply(Ev("b", ts=T0 + 240_000), cfg, NOW)  # exactly max - lateness
    late = state.apply(Ev("c", type="click", item_id="i7", ts=T0 + 239_999), cfg, NOW)
    assert not on_time.late and late.late and not late.duplicate
    snap = state.snapshot(cfg, NOW)
    assert snap["windows"]["10m"]["view"] == 2 and snap["windows"]["10m"]["click"] == 0
    # a late event still counts in lifetime state, the sequence and distinct items
    assert snap["counts"]["click"] == 1 and snap["events_total"] == 3
    assert snap["late_events"] == 1
    assert snap["sequence"][0] == {"item_id": "i7", "type": "click", "ts": T0 + 239_999}
    assert snap["distinct_items"] == 2
    assert snap["last_ts"] == T0 + 300_000  # and it does not move event time


def test_late_events_do_not_reach_any_window_even_a_long_one() -> None:
    state = fold([Ev("a", ts=T0 + HOUR), Ev("b", type="purchase", ts=T0, price=10.0)])
    snap = state.snapshot(CFG, NOW)
    assert snap["late_events"] == 1
    assert snap["windows"]["24h"]["purchase"] == 0 and snap["windows"]["24h"]["spend"] == 0
    assert snap["spend_total"] == 10.0 and snap["counts"]["purchase"] == 1


def test_an_out_of_order_event_older_than_the_window_is_not_counted() -> None:
    cfg = replace(ONE_MIN, allowed_lateness_s=3600)  # lateness longer than the window
    state = fold([Ev("a", ts=T0 + 120_000), Ev("b", ts=T0)], cfg)
    assert state.late == 0 and counts_1m(state, cfg)["view"] == 1
    # the latest tile is 24, so the window is tiles 13..24: tile 12 is just outside
    state.apply(Ev("c", type="click", ts=T0 + 64_999), cfg, NOW)
    assert counts_1m(state, cfg)["click"] == 0
    state.apply(Ev("d", type="click", ts=T0 + 65_000), cfg, NOW)
    assert counts_1m(state, cfg)["click"] == 1


def test_window_counts_at_an_earlier_event_time() -> None:
    state = fold([Ev("a", ts=T0), Ev("b", ts=T0 + 30_000), Ev("c", ts=T0 + 50_000)], ONE_MIN)
    assert state.window_counts(ONE_MIN, 0, T0 + 30_000)[0] == 2
    assert state.window_counts(ONE_MIN, 0, T0 + 50_000)[0] == 3


def test_an_empty_window_reads_exactly_zero_spend() -> None:
    prices = [0.1, 0.2, 0.7, 1.1, 3.3]
    state = fold([Ev(f"p{i}", type="purchase", ts=T0 + i * 5_000, price=p)
                  for i, p in enumerate(prices)], ONE_MIN)
    state.apply(Ev("later", ts=T0 + 10 * 60_000), ONE_MIN, NOW)
    assert state.window_counts(ONE_MIN, 0, state.max_ts) == [1, 0, 0, 0, 0]
    assert state.numeric_features(ONE_MIN, Ev("later"))["spend_1m"] == 0.0


def _brute_force_windows(events: list[Ev], cfg: FeatureConfig) -> list[list[float]]:
    """What the windows should hold, from the contract, by brute force over all events."""
    seen: set[str] = set()
    kept: list[Ev] = []
    max_ts = -1
    for ev in events:
        if ev.event_id in seen:
            continue
        seen.add(ev.event_id)
        if max_ts < 0 or ev.ts >= max_ts - cfg.allowed_lateness_s * 1000:
            kept.append(ev)  # not late when it arrived
        max_ts = max(max_ts, ev.ts)
    out = []
    for w in range(len(cfg.windows_s)):
        tile = cfg.tile_ms(w)
        cur = max_ts // tile
        row = [0.0] * 5
        for ev in kept:
            if cur - cfg.window_buckets < ev.ts // tile <= cur:
                t = EVENT_TYPES.index(ev.type)
                row[t] += 1
                if ev.type == "purchase" and ev.price is not None:
                    row[4] += ev.price * (ev.quantity or 1)
        out.append(row)
    return out


# tile and window edges of the windows tested below, where off-by-one errors live
TILE_EDGES = [0, 4_999, 5_000, 7_499, 7_500, 59_999, 60_000, 64_999, 65_000, 90_000, HOUR,
              HOUR + 299_999, HOUR + 300_000]
event_streams = st.lists(
    st.tuples(st.integers(0, 40), st.sampled_from(EVENT_TYPES),
              st.integers(0, 3 * HOUR) | st.sampled_from(TILE_EDGES),
              st.sampled_from([None, 0.0, 1.25, 9.99, 120.0]), st.sampled_from([None, 1, 3])),
    min_size=1, max_size=80,
).map(lambda rows: [Ev(f"e{n}", type=t, ts=T0 + ts, price=p, quantity=q, item_id=f"i{n % 7}")
                    for n, t, ts, p, q in rows])  # ids repeat: duplicates, payload may differ


@settings(max_examples=150, deadline=None)
@given(events=event_streams, buckets=st.sampled_from([1, 4, 12, 7]),
       lateness=st.sampled_from([0, 60, 600, 7200]))
def test_window_counts_equal_a_brute_force_count(
        events: list[Ev], buckets: int, lateness: int) -> None:
    cfg = FeatureConfig(windows_s=(60, 90, 3600, 86400), window_buckets=buckets,
                        allowed_lateness_s=lateness)
    state = fold(events, cfg)
    expected = _brute_force_windows(events, cfg)
    for w, want in enumerate(expected):
        got = state.window_counts(cfg, w, state.max_ts)
        assert got[:4] == want[:4]
        assert got[4] == pytest.approx(want[4], abs=1e-9)
    feats = state.numeric_features(cfg, events[-1])
    assert feats["count_purchase_90s"] == expected[1][3]
    assert feats["purchase_rate_1h"] == expected[2][3]
    snap = state.snapshot(cfg, NOW)
    assert snap["windows"]["24h"]["purchase_velocity_per_h"] == expected[3][3] / 24


# --- sequence, sessions, spend, distinct counts -------------------------------------------

def test_sequence_is_the_last_n_by_event_time_with_stragglers_inserted_in_order() -> None:
    cfg = replace(CFG, sequence_length=4)
    state = fold([Ev("a", item_id="a", ts=T0 + 10), Ev("b", item_id="b", ts=T0 + 30),
                  Ev("c", item_id="c", ts=T0 + 20), Ev("d", item_id="d", ts=T0 + 30),
                  Ev("e", item_id="e", ts=T0 + 5)], cfg)
    # e is older than everything kept: the bounded sequence drops it, not the newest
    assert [(s.item_id, s.ts_ms - T0) for s in state.sequence()] == [
        ("a", 10), ("c", 20), ("b", 30), ("d", 30)]
    state.apply(Ev("f", item_id="f", type="purchase", ts=T0 + 25), cfg, NOW)
    assert [s.item_id for s in state.sequence()] == ["c", "f", "b", "d"]
    state.apply(Ev("g", item_id="g", ts=T0 + 25), cfg, NOW)  # a tie goes after, by arrival
    assert [s.item_id for s in state.sequence()] == ["f", "g", "b", "d"]
    assert [s.event_type for s in state.sequence()][:2] == ["purchase", "view"]


@settings(max_examples=60, deadline=None)
@given(events=event_streams, length=st.integers(1, 10))
def test_sequence_matches_a_stable_sort_by_event_time(events: list[Ev], length: int) -> None:
    cfg = replace(CFG, sequence_length=length)
    state = fold(events, cfg)
    first: dict[str, Ev] = {}
    for e in events:
        first.setdefault(e.event_id, e)  # a duplicate is dropped: the first arrival wins
    want = sorted(first.values(), key=lambda e: e.ts)[-length:]
    assert [(s.item_id, s.ts_ms) for s in state.sequence()] == [(e.item_id, e.ts) for e in want]


def test_sessions_split_on_a_30_minute_event_time_gap() -> None:
    gap = 30 * 60_000
    state = fold([Ev("a", ts=T0), Ev("b", ts=T0 + gap)])  # exactly the gap: same session
    first = state.snapshot(CFG, NOW)["session"]
    assert first["length"] == 2 and first["duration_s"] == 1800 and first["id"] == "u1#1"
    state.apply(Ev("c", ts=T0 + 2 * gap + 1), CFG, NOW)  # more than the gap: a new one
    snap = state.snapshot(CFG, NOW)["session"]
    assert snap == {"id": "u1#2", "length": 1, "start_ts": T0 + 2 * gap + 1, "duration_s": 0}
    feats = state.numeric_features(CFG, Ev("c"))
    assert feats["session_length"] == 1 and feats["session_duration_s"] == 0


def test_out_of_order_events_join_or_skip_sessions_by_event_time() -> None:
    gap = 30 * 60_000
    state = fold([Ev("a", ts=T0 + 10 * HOUR), Ev("b", ts=T0 + 10 * HOUR - gap)])
    assert state.snapshot(CFG, NOW)["session"]["length"] == 2  # extends the session back
    assert state.snapshot(CFG, NOW)["session"]["start_ts"] == T0 + 10 * HOUR - gap
    state.apply(Ev("c", ts=T0), CFG, NOW)  # an older session's event
    assert state.snapshot(CFG, NOW)["session"]["length"] == 2


def test_an_explicit_session_id_wins_over_the_gap() -> None:
    state = fold([Ev("a", ts=T0, session_id="s1"), Ev("b", ts=T0 + 5 * HOUR, session_id="s1")])
    assert state.snapshot(CFG, NOW)["session"]["id"] == "s1"
    assert state.snapshot(CFG, NOW)["session"]["length"] == 2
    state.apply(Ev("c", ts=T0 + 5 * HOUR + 1, session_id="s2"), CFG, NOW)
    assert state.snapshot(CFG, NOW)["session"] == {
        "id": "s2", "length": 1, "start_ts": T0 + 5 * HOUR + 1, "duration_s": 0}
    state.apply(Ev("d", ts=T0 + 1, session_id="s1"), CFG, NOW)  # a straggler of s1
    assert state.snapshot(CFG, NOW)["session"]["id"] == "s2"


def test_an_old_straggler_with_a_session_id_does_not_replace_a_gap_session() -> None:
    state = fold([Ev("a", ts=T0 + HOUR), Ev("b", ts=T0 + HOUR + 1000)])
    state.apply(Ev("c", ts=T0 + HOUR - 10 * 60_000, session_id="old-app-session"), CFG, NOW)
    session = state.snapshot(CFG, NOW)["session"]
    assert session["id"] == "u1#1" and session["start_ts"] <= T0 + HOUR


def test_spend_is_price_times_quantity_on_purchases_only() -> None:
    state = fold([
        Ev("v", type="view", price=50.0, quantity=2, ts=T0),
        Ev("c", type="add_to_cart", price=50.0, quantity=2, ts=T0 + 1),
        Ev("p1", type="purchase", price=12.5, quantity=2, ts=T0 + 2),
        Ev("p2", type="purchase", price=3.0, ts=T0 + 3),  # quantity defaults to 1
        Ev("p3", type="purchase", ts=T0 + 4),  # no price: counts, spends nothing
    ])
    snap = state.snapshot(CFG, NOW)
    assert snap["spend_total"] == 28.0
    assert snap["windows"]["1h"]["spend"] == 28.0 and snap["windows"]["1h"]["purchase"] == 3
    assert snap["windows"]["1h"]["purchase_velocity_per_h"] == 3.0
    assert snap["windows"]["24h"]["purchase_velocity_per_h"] == pytest.approx(3 / 24)
    assert snap["windows"]["1m"]["purchase_velocity_per_h"] == 180.0
    feats = state.numeric_features(CFG, Ev("p3", type="purchase"))
    assert feats["spend_1h"] == 28.0 and feats["purchase_rate_1h"] == 3.0
    assert feats["purchase_to_view_1h"] == 3.0  # views clamp to 1 in the ratio
    assert feats["cart_to_view_1h"] == 1.0


def test_distinct_items_and_categories_are_exact_below_256() -> None:
    events = [Ev(f"e{i}", item_id=f"item-{i % 255}", category=f"c{i % 17}", ts=T0 + i)
              for i in range(600)]
    snap = fold(events).snapshot(CFG, NOW)
    assert snap["distinct_items"] == 255 and snap["distinct_categories"] == 17


def test_distinct_items_above_256_are_estimated_within_a_few_percent() -> None:
    events = [Ev(f"e{i}", item_id=f"item-{i % 5000}", ts=T0 + i) for i in range(8000)]
    state = fold(events, replace(CFG, dedupe_ids=10))
    assert state.snapshot(CFG, NOW)["distinct_items"] == pytest.approx(5000, rel=0.15)


def test_distinct_devices_and_ips_cover_the_last_24h_of_event_time() -> None:
    state = fold([Ev("a", ts=T0, device_id="d1", ip="10.0.0.1"),
                  Ev("b", ts=T0 + HOUR, device_id="d2", ip="10.0.0.1"),
                  Ev("c", ts=T0 + DAY, device_id="d3", ip="10.0.0.2")])
    snap = state.snapshot(CFG, NOW)
    # d1 was last seen exactly 24 h before the latest event: still inside
    assert snap["distinct_devices_24h"] == 3 and snap["distinct_ips_24h"] == 2
    state.apply(Ev("d", ts=T0 + DAY + HOUR + 1, device_id="d3"), CFG, NOW)
    snap = state.snapshot(CFG, NOW)
    assert snap["distinct_devices_24h"] == 1 and snap["distinct_ips_24h"] == 1
    feats = state.numeric_features(CFG, Ev("d"))
    assert feats["distinct_devices_24h"] == 1 and feats["distinct_ips_24h"] == 1


def test_new_device_and_new_ip_flag_a_change_not_the_first_sighting() -> None:
    cfg = CFG
    state = UserState("u1", 3)
    flags = []
    for ev in [Ev("a", ts=T0, device_id="d1", ip="ip1"), Ev("b", ts=T0 + 1, device_id="d1"),
               Ev("c", ts=T0 + 2, device_id="d2", ip="ip2"), Ev("d", ts=T0 + 3, device_id="d1"),
               Ev("e", ts=T0 + 2 * DAY, device_id="d2", ip="ip1")]:
        state.apply(ev, cfg, NOW)
        f = state.numeric_features(cfg, ev)
        flags.append((f["new_device"], f["new_ip"]))
    assert flags == [(0, 0), (0, 0), (1, 1), (0, 0), (1, 1)]


# --- TTL -------------------------------------------------------------------------------

def test_an_idle_user_is_reset_on_its_next_event_after_the_ttl() -> None:
    cfg = replace(CFG, user_ttl_s=3600)
    state = fold([Ev("a", type="purchase", price=3.0, ts=T0), Ev("b", ts=T0 + 1)], cfg)
    assert not state.expired(cfg, NOW + HOUR)  # exactly the TTL: still alive
    assert state.expired(cfg, NOW + HOUR + 1)
    res = state.apply(Ev("a", type="click", ts=T0 + 2), cfg, NOW + HOUR + 1)
    assert res == ApplyResult(duplicate=False, late=False, expired_reset=True)
    snap = state.snapshot(cfg, NOW + HOUR + 1)
    # nothing from before survives, not even the remembered event ids
    assert snap["events_total"] == 1 and snap["counts"]["click"] == 1
    assert snap["spend_total"] == 0 and snap["windows"]["24h"]["purchase"] == 0
    assert snap["first_ts"] == T0 + 2 and len(snap["sequence"]) == 1
    assert not state.expired(cfg, NOW + HOUR + 1)


def test_activity_within_the_ttl_keeps_a_user_alive() -> None:
    cfg = replace(CFG, user_ttl_s=3600)
    state = UserState("u1", 3)
    for i in range(5):
        res = state.apply(Ev(f"e{i}", ts=T0 + i), cfg, NOW + i * (HOUR - 1))
        assert not res.expired_reset
    assert state.total == 5


def test_a_fresh_state_never_reads_as_expired() -> None:
    assert not UserState("u1", 3).expired(CFG, NOW)


# --- persistence and the model's view -----------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(events=event_streams, cut=st.integers(0, 80))
def test_to_bytes_from_bytes_round_trip_mid_stream(events: list[Ev], cut: int) -> None:
    cfg = FeatureConfig(window_buckets=4, sequence_length=5, dedupe_ids=20)
    devices = [replace(e, device_id=f"d{i % 3}", ip=f"ip{i % 2}", category=f"c{i % 4}",
                       session_id="s" if i % 5 == 0 else None) for i, e in enumerate(events)]
    stream = devices + devices[: len(devices) // 2]  # some duplicates to dedupe after restore
    straight = fold(stream[:cut], cfg)
    restored = UserState.from_bytes(straight.to_bytes(), len(cfg.windows_s))
    assert restored.snapshot(cfg, NOW) == straight.snapshot(cfg, NOW)
    for ev in stream[cut:]:
        res = restored.apply(ev, cfg, NOW)
        assert straight.apply(ev, cfg, NOW) == res
        if not res.duplicate:  # the worker reads features right after a non-duplicate
            assert restored.numeric_features(cfg, ev) == straight.numeric_features(cfg, ev)
    assert restored.snapshot(cfg, NOW) == straight.snapshot(cfg, NOW)
    assert restored.to_bytes() == straight.to_bytes()


def test_from_bytes_rejects_an_unknown_format() -> None:
    with pytest.raises(StateError, match="unknown user state format"):
        UserState.from_bytes(b'[99, "u1"]', 3)
    with pytest.raises(ValueError):
        UserState.from_bytes(b'{"user_id": "u1"}', 3)


def test_numeric_features_cover_the_model_contract_and_are_numbers() -> None:
    ev = Ev("e1", type="purchase", price=4.5, quantity=2, ts=T0, category="c", device_id="d",
            ip="ip")
    state = fold([Ev("e0", ts=T0 - 90_000), ev])
    feats = state.numeric_features(CFG, ev)
    assert set(FEATURE_NAMES) <= set(feats)
    assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in feats.values())
    assert feats["events_total"] == 2 and feats["count_purchase"] == 1
    assert feats["count_view_1m"] == 0 and feats["count_view_1h"] == 1
    assert feats["spend_24h"] == 9.0 and feats["price"] == 4.5
    assert feats["gap_s"] == 90.0


def test_gap_is_minus_one_for_the_first_and_for_out_of_order_events() -> None:
    state = UserState("u1", 3)
    state.apply(Ev("a", ts=T0), CFG, NOW)
    assert state.numeric_features(CFG, Ev("a"))["gap_s"] == -1.0
    state.apply(Ev("b", ts=T0 - 1000), CFG, NOW)
    assert state.numeric_features(CFG, Ev("b"))["gap_s"] == -1.0


def test_snapshot_of_a_user_without_events() -> None:
    snap = UserState("u1", 3).snapshot(CFG, NOW)
    assert snap["events_total"] == 0 and snap["counts"] == dict.fromkeys(EVENT_TYPES, 0)
    assert snap["seconds_since_last_event"] is None and snap["session"]["id"] is None
    assert snap["windows"]["1h"] == {**dict.fromkeys(EVENT_TYPES, 0), "spend": 0,
                                     "purchase_velocity_per_h": 0.0}


def test_snapshot_reports_seconds_since_the_latest_event() -> None:
    state = fold([Ev("a", ts=NOW - 90_000)])
    assert state.snapshot(CFG, NOW)["seconds_since_last_event"] == 90.0


def test_feature_config_from_settings_and_custom_window_labels() -> None:
    from stream.settings import Settings

    s = Settings(windows_s=(3600, 90, 60), window_buckets=6, user_ttl_s=10)
    cfg = FeatureConfig.from_settings(s)
    assert cfg.windows_s == (60, 90, 3600) and cfg.labels == ("1m", "90s", "1h")
    assert cfg.window_buckets == 6 and cfg.user_ttl_s == 10
    assert cfg.tile_ms(1) == 15_000


def test_the_wire_event_type_is_accepted() -> None:
    ev = Event(event_id="e1", user_id="u1", type="purchase", item_id="i1", ts=T0, price=2.0,
               quantity=3)
    state = UserState("u1", 3)
    assert state.apply(ev, CFG, NOW) == ApplyResult(duplicate=False, late=False)
    assert state.numeric_features(CFG, ev)["spend_1h"] == 6.0
