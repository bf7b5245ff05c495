"""Targets and the simple rule a live replay is scored against (model.train.live)."""

from model.train.live import history_then_covisitation, hit_rate, next_different_targets


def ev(i: int, user: str, item: str, kind: str = "view") -> dict[str, object]:
    return {"event_id": f"e{i}", "user_id": user, "item_id": item, "type": kind, "ts": i}


def test_the_target_is_the_next_item_that_differs_from_the_trigger() -> None:
    events = [ev(0, "u", "a"), ev(1, "v", "x"), ev(2, "u", "a"), ev(3, "u", "b"),
              ev(4, "u", "b"), ev(5, "u", "a"), ev(6, "v", "x")]
    assert next_different_targets(events) == {"e0": "b", "e2": "b", "e3": "a", "e4": "a"}


def test_history_first_then_neighbours_from_earlier_events_only() -> None:
    events = [ev(0, "w", "a"), ev(1, "w", "n1"), ev(2, "w", "a"), ev(3, "w", "n2"),
              ev(4, "w", "n2"),  # a~n1 twice (both ways), a~n2 once, a repeat never
              ev(5, "u", "h"), ev(6, "u", "a"), ev(7, "u", "z", "purchase")]
    ranked = history_then_covisitation(events, k=3, recommend_on={"view", "click"})
    assert ranked["e0"] == []  # nothing known before the first event
    assert ranked["e6"] == ["h", "n1", "n2"]  # own history, then a's neighbours by count
    assert "e7" not in ranked  # purchases are not recommended on
    assert "a" not in ranked["e2"]  # never the trigger itself


def test_hit_rate_counts_only_cases_with_a_target() -> None:
    ranked = {"e1": ["x", "y"], "e2": ["z"], "e3": ["q"]}
    targets = {"e1": "y", "e2": "y"}
    assert hit_rate(ranked, targets, k=2) == (0.5, 2)
    assert hit_rate(ranked, targets, k=1) == (0.0, 2)
    assert hit_rate(ranked, targets, k=2, cases=["e1"]) == (1.0, 1)
