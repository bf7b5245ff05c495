"""The delayed-reward join's pure state: on time, late, duplicate, never rewarded."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from stream.errors import LamstreamError
from stream.feedback.privacy import Pseudonymizer
from stream.state.rewards import JoinConfig, UserJoin

MIN = 60_000
CFG = JoinConfig(window_ms=30 * MIN, lateness_ms=MIN)
T0 = 1_764_000_000_000


def decision(rec: str, ts: int, items: tuple[str, ...] = ("a", "b", "c")) -> dict[str, Any]:
    return {"rec_id": rec, "event_id": rec.removeprefix("rec:"), "event_ts": ts,
            "items": [{"item_id": i, "score": 1.0, "propensity": 0.5} for i in items]}


def test_on_time_engagement_is_rewarded_when_the_window_closes() -> None:
    st = UserJoin(0)
    assert st.add_decision(decision("rec:1", T0), CFG) == "added"
    st.add_engagement(T0 + 10 * MIN, "click", "b", "e2", CFG)
    assert st.close_due(T0 + 30 * MIN, CFG) == []  # window end, lateness not yet over
    [o] = st.close_due(T0 + 31 * MIN, CFG)
    assert (o.reward, o.engaged_item, o.engaged_type, o.outcome_ts) == (
        1.0, "b", "click", T0 + 10 * MIN)
    assert st.close_due(T0 + 90 * MIN, CFG) == []  # closed once


def test_highest_reward_counts_once_and_only_shown_items_in_window() -> None:
    st = UserJoin(0)
    st.add_decision(decision("rec:1", T0), CFG)
    st.add_engagement(T0 + MIN, "click", "a", "e2", CFG)
    st.add_engagement(T0 + 2 * MIN, "purchase", "zzz", "e3", CFG)  # not shown
    st.add_engagement(T0 + 3 * MIN, "add_to_cart", "c", "e4", CFG)
    st.add_engagement(T0 + 4 * MIN, "click", "c", "e5", CFG)
    st.add_engagement(T0 - MIN, "purchase", "a", "e0", CFG)  # before the decision
    st.add_engagement(T0 + 3 * MIN, "add_to_cart", "c", "e4", CFG)  # duplicate event
    [o] = st.close_due(T0 + 40 * MIN, CFG)
    assert (o.reward, o.engaged_item, o.engaged_type) == (2.0, "c", "add_to_cart")


def test_late_engagement_after_the_window_earns_nothing() -> None:
    st = UserJoin(0)
    st.add_decision(decision("rec:1", T0), CFG)
    st.add_engagement(T0 + 45 * MIN, "purchase", "a", "e9", CFG)  # outside the window
    [o] = st.close_due(T0 + 45 * MIN, CFG)
    assert o.reward == 0.0 and o.engaged_item is None and o.outcome_ts == T0 + 30 * MIN


def test_engagement_seen_before_the_decision_arrives_still_counts() -> None:
    st = UserJoin(0)  # the worker lagged: the click reached the join first
    st.add_engagement(T0 + 5 * MIN, "purchase", "b", "e5", CFG)
    st.add_decision(decision("rec:1", T0), CFG)
    [o] = st.close_due(T0 + 40 * MIN, CFG)
    assert o.reward == 5.0


def test_duplicate_decision_is_ignored_also_after_it_was_emitted() -> None:
    st = UserJoin(0)
    assert st.add_decision(decision("rec:1", T0), CFG) == "added"
    assert st.add_decision(decision("rec:1", T0), CFG) == "duplicate"
    assert len(st.close_due(T0 + 40 * MIN, CFG)) == 1
    # re-delivered after emission
    assert st.add_decision(decision("rec:1", T0), CFG, T0 + 40 * MIN) == "duplicate"
    assert st.close_due(T0 + 80 * MIN, CFG) == []
    # long after: its id is forgotten, so it is refused rather than emitted again
    far = T0 + 30 * MIN + CFG.horizon_ms + 1
    st.close_due(far, CFG)
    assert "rec:1" not in st.done
    assert st.add_decision(decision("rec:1", T0), CFG, far) == "too_late"


def test_never_rewarded_closes_with_zero_and_state_survives_bytes() -> None:
    st = UserJoin(3)
    st.add_decision(decision("rec:1", T0), CFG)
    st.add_engagement(T0 + MIN, "view", "a", "e1", CFG)  # a view is not an engagement
    st = UserJoin.from_bytes(st.to_bytes())
    assert st.partition == 3 and st.next_deadline(CFG) == T0 + 30 * MIN
    [o] = st.close_due(T0 + 31 * MIN, CFG)
    assert o.reward == 0.0
    # done ids and engagements are forgotten past the horizon: the state empties
    st.close_due(T0 + 31 * MIN + CFG.horizon_ms + 1, CFG)
    assert st.empty()


def test_pending_is_bounded_oldest_closes_early() -> None:
    cfg = JoinConfig(window_ms=30 * MIN, lateness_ms=MIN, max_pending=3)
    st = UserJoin(0)
    for i in range(5):
        st.add_decision(decision(f"rec:{i}", T0 + i), cfg)
    out = st.close_due(T0, cfg)
    assert sorted(o.decision["rec_id"] for o in out) == ["rec:0", "rec:1"]
    assert len(st.pending) == 3


def test_pseudonyms_are_keyed_stable_and_never_the_id() -> None:
    a = Pseudonymizer(SecretStr("k" * 32))
    b = Pseudonymizer(SecretStr("other-key-" * 4))
    assert a.user_key("alice") == a.user_key("alice") != a.user_key("bob")
    assert a.user_key("alice") != b.user_key("alice") and a.key_id != b.key_id
    assert "alice" not in a.user_key("alice") and "k" * 16 not in repr(a)
    with pytest.raises(LamstreamError):
        Pseudonymizer(None)
    with pytest.raises(LamstreamError):
        Pseudonymizer(SecretStr("short"))
