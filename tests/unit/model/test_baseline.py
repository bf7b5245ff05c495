"""The baseline predictor: online co-visitation recommendations and the explainable risk rules."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.predictor import Predictor
from model.recommenders.baseline import RISK_RULES, BaselinePredictor
from model.types import FEATURE_NAMES, PredictionContext, SeqItem

T0 = 1_717_243_200_000
MIN = 60_000


class User:
    """Builds the contexts the worker would send for one user's events, sequence included."""

    def __init__(self, name: str, ts: int = T0) -> None:
        self.name = name
        self.seq: list[SeqItem] = []
        self.ts = ts
        self.n = 0

    def event(self, item: str, etype: str = "view", *, gap_ms: int = MIN, k: int = 10,
              exclude: frozenset[str] = frozenset(),
              features: dict[str, float] | None = None) -> PredictionContext:
        self.ts += gap_ms
        self.n += 1
        self.seq.append(SeqItem(item, etype, self.ts))
        return PredictionContext(
            user_id=self.name, event_id=f"{self.name}-{self.n}", item_id=item, event_type=etype,
            ts_ms=self.ts, category=None, sequence=tuple(self.seq[-50:]),
            features=features or {}, k=k, exclude_items=exclude)


def learn(p: BaselinePredictor, contexts: list[PredictionContext]) -> None:
    p.predict_batch(contexts)  # the worker predicts, then learns from the same batch
    p.learn_batch(contexts)


def ids(ctx: PredictionContext, p: BaselinePredictor) -> list[str]:
    return [s.item_id for s in p.recommend(ctx)]


# --- recommendations --------------------------------------------------------------------

def test_it_satisfies_the_predictor_protocol() -> None:
    p = BaselinePredictor()
    assert isinstance(p, Predictor) and p.name and p.version


def test_an_empty_model_recommends_nothing_but_still_scores_risk() -> None:
    [pred] = BaselinePredictor().predict_batch([User("u").event("i1")])
    assert pred.items == () and 0 <= pred.risk.score <= 1 and pred.model_version


def test_co_visited_items_come_before_merely_popular_ones() -> None:
    p = BaselinePredictor()
    batch = []
    for n in range(30):  # many users go from a phone to its case
        u = User(f"u{n}")
        batch += [u.event("phone"), u.event("case")]
    for n in range(60):  # a hugely popular item nobody views next to the phone
        batch.append(User(f"v{n}").event("bestseller", "purchase"))
    learn(p, batch)
    assert ids(User("new").event("phone"), p)[0] == "case"
    assert ids(User("new2").event("something-else"), p)[0] == "bestseller"


def test_covisitation_links_consecutive_items_however_far_apart() -> None:
    days = 3 * 24 * 60 * MIN  # reviews and purchases are days apart
    batch = []
    for n in range(20):
        u = User(f"u{n}")
        batch += [u.event("a"), u.event("b", gap_ms=days)]
    p = BaselinePredictor()
    learn(p, batch)
    assert "b" in p.covis["a"] and "a" in p.covis["b"]
    classic = BaselinePredictor(session_gap_ms=30 * MIN)  # in-session pairs only
    learn(classic, batch)
    assert "a" not in classic.covis.get("b", {}) and "b" not in classic.covis.get("a", {})


def _world(repeat: bool) -> list[Any]:
    """Users who go h (their own) -> n1 -> (back to h | on to n2), and a few who go t -> p
    or t -> q."""
    batch = []
    for n in range(300):
        u = User(f"u{n}")
        batch += [u.event(f"h{n}"), u.event("n1"), u.event(f"h{n}" if repeat else "n2")]
    for n in range(10):
        u = User(f"w{n}")
        batch += [u.event("t"), u.event("p" if n % 2 else "q")]
    return batch


def _after_old_then_t(p: BaselinePredictor) -> list[str]:
    u = User("fresh")
    learn(p, [u.event("old")])
    return ids(u.event("t"), p)


def test_the_users_own_items_lead_while_users_come_back_to_them() -> None:
    p = BaselinePredictor()
    learn(p, _world(repeat=True))
    assert p.rate_history > p.rate_neighbours
    assert _after_old_then_t(p)[0] == "old"


def test_neighbours_lead_where_nothing_repeats() -> None:
    p = BaselinePredictor()
    learn(p, _world(repeat=False))
    assert p.rate_neighbours > p.rate_history
    assert set(_after_old_then_t(p)[:2]) == {"p", "q"}


def test_the_users_own_recent_items_are_candidates() -> None:
    p = BaselinePredictor()
    u = User("u")
    learn(p, [u.event("x"), u.event("y", "add_to_cart")])
    assert ids(u.event("z"), p)[:2] == ["y", "x"]


def test_never_the_trigger_item_nor_an_excluded_item() -> None:
    p = BaselinePredictor()
    u = User("u")
    learn(p, [u.event(f"i{n}") for n in range(30)] + [u.event("i1"), u.event("i2")])
    ctx = u.event("i2", exclude=frozenset({"i1", "i29", "i28"}))
    got = ids(ctx, p)
    assert len(got) == 10 and not {"i2", "i1", "i29", "i28"} & set(got)


def test_k_items_as_soon_as_enough_items_are_known() -> None:
    p = BaselinePredictor()
    learn(p, [User("first").event("only")])  # the first batch knew one item
    learn(p, [User(f"u{n}").event(f"item{n}") for n in range(40)])
    got = ids(User("new").event("item3", k=10), p)
    assert len(got) == 10 and len(set(got)) == 10 and "item3" not in got


def test_a_large_k_is_filled_when_enough_items_are_known() -> None:
    p = BaselinePredictor()
    learn(p, [User(f"u{n}").event(f"item{n}") for n in range(700)])
    got = ids(User("new").event("item3", k=500), p)
    assert len(got) == 500 and len(set(got)) == 500 and "item3" not in got


def test_fewer_than_k_only_when_fewer_are_known() -> None:
    p = BaselinePredictor()
    learn(p, [User(f"u{n}").event(f"item{n}") for n in range(5)])
    got = ids(User("new").event("item0", k=10, exclude=frozenset({"item4"})), p)
    assert sorted(got) == ["item1", "item2", "item3"]


def test_scores_are_sorted_and_propensities_valid() -> None:
    p = BaselinePredictor()
    rnd = random.Random(3)
    batch = []
    for n in range(50):
        u = User(f"u{n}")
        batch += [u.event(f"i{rnd.randrange(25)}", rnd.choice(["view", "click", "purchase"]))
                  for _ in range(6)]
    learn(p, batch)
    recs = p.recommend(User("x").event("i1"))
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True) and len(recs) == 10
    assert all(0 <= r.propensity <= 1 for r in recs)


def test_recommend_false_gives_no_items_and_batches_keep_their_order() -> None:
    p = BaselinePredictor()
    learn(p, [User(f"u{n}").event(f"i{n}") for n in range(20)])
    u = User("u")
    a, b = u.event("i1"), u.event("i2")
    b = PredictionContext(**{**{f: getattr(b, f) for f in b.__slots__}, "recommend": False})
    preds = p.predict_batch([a, b])
    assert len(preds) == 2 and preds[0].items and preds[1].items == ()


def test_learning_is_deterministic() -> None:
    def run() -> list[list[str]]:
        p = BaselinePredictor()
        rnd = random.Random(11)
        out = []
        for n in range(40):
            u = User(f"u{n % 7}")
            batch = [u.event(f"i{rnd.randrange(30)}") for _ in range(3)]
            out.append([s.item_id for pred in p.predict_batch(batch) for s in pred.items])
            p.learn_batch(batch)
        return out

    assert run() == run()


@settings(max_examples=40, deadline=None)
@given(stream=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 40),
                                 st.sampled_from(["view", "click", "add_to_cart", "purchase"])),
                       min_size=1, max_size=120),
       trigger=st.integers(0, 40), exclude=st.sets(st.integers(0, 40), max_size=8),
       k=st.integers(1, 30))
def test_recommendations_are_distinct_never_excluded_and_k_when_possible(
        stream: list[tuple[int, int, str]], trigger: int, exclude: set[int], k: int) -> None:
    p = BaselinePredictor(max_neighbours=4)
    users = {n: User(f"u{n}") for n in range(7)}
    learn(p, [users[u].event(f"i{i}", t) for u, i, t in stream])
    ctx = users[0].event(f"i{trigger}", k=k, exclude=frozenset(f"i{e}" for e in exclude))
    got = ids(ctx, p)
    assert len(got) == len(set(got)) <= k
    banned = ctx.exclude_items | {ctx.item_id}
    assert not banned & set(got)
    known = set(p.pop) | {s.item_id for s in ctx.sequence}
    assert len(got) == min(k, len(known - banned))


def test_memory_stays_bounded() -> None:
    p = BaselinePredictor(max_items=100, max_neighbours=5)
    u = User("u")
    learn(p, [u.event(f"i{n}", gap_ms=1000) for n in range(1000)])
    assert len(p.pop) <= 100
    assert all(len(nb) <= 10 for nb in p.covis.values())
    assert len(p.covis) <= 2 * 100


# --- risk -------------------------------------------------------------------------------

QUIET = {"distinct_devices_24h": 1.0, "distinct_ips_24h": 1.0, "count_purchase_1m": 0.0,
         "count_add_to_cart_1m": 1.0, "purchase_to_view_1h": 0.0, "new_device": 0.0,
         "new_ip": 0.0, "spend_1h": 20.0}
BURST = {"distinct_devices_24h": 5.0, "distinct_ips_24h": 6.0, "count_purchase_1m": 4.0,
         "count_add_to_cart_1m": 8.0, "purchase_to_view_1h": 3.0, "new_device": 1.0,
         "new_ip": 1.0, "spend_1h": 20.0}


def test_normal_activity_scores_low_with_no_reasons() -> None:
    risk = BaselinePredictor().risk(QUIET)
    assert risk.score < 0.05 and risk.reasons == ()


def test_a_burst_scores_high_with_reasons_sorted_by_contribution() -> None:
    risk = BaselinePredictor().risk(BURST)
    assert risk.score >= 0.8
    contributions = [r.contribution for r in risk.reasons]
    assert contributions == sorted(contributions, reverse=True) and contributions[0] > 0
    rule_features = {r.feature for r in RISK_RULES}
    assert {r.feature for r in risk.reasons} <= rule_features
    assert {r.feature for r in risk.reasons} >= {"distinct_devices_24h", "count_purchase_1m"}
    for r in risk.reasons:
        assert r.value == BURST[r.feature]
    # the score is the logistic of the bias plus the contributions the reasons report
    logit = math.log(risk.score / (1 - risk.score))
    assert logit == pytest.approx(-5.0 + sum(contributions))


def test_risk_rules_read_features_the_stream_provides() -> None:
    assert {r.feature for r in RISK_RULES} - {"spend_z_1h"} <= set(FEATURE_NAMES)


def test_spend_far_above_the_streams_normal_is_a_reason() -> None:
    p = BaselinePredictor()
    u = User("u")
    rnd = random.Random(5)
    learn(p, [u.event(f"i{n}", "purchase", features={"spend_1h": 40 + rnd.random() * 20})
              for n in range(50)])
    assert p.risk({"spend_1h": 50.0}).reasons == ()
    reasons = p.risk({"spend_1h": 5_000.0}).reasons
    assert [r.feature for r in reasons] == ["spend_z_1h"] and reasons[0].value > 8


@settings(max_examples=100, deadline=None)
@given(features=st.dictionaries(
    st.sampled_from([r.feature for r in RISK_RULES] + ["spend_1h", "unrelated"]),
    st.floats(-1e12, 1e12, allow_nan=False), max_size=9))
def test_the_risk_score_is_a_probability_for_any_features(features: dict[str, float]) -> None:
    risk = BaselinePredictor().risk(features)
    assert 0.0 <= risk.score <= 1.0
    assert all(r.contribution > 0 for r in risk.reasons)
    assert len({r.feature for r in risk.reasons}) == len(risk.reasons)
