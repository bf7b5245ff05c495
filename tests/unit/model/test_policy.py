"""Exploration policies: exact propensities, reproducibility, decay, the predictor wrapper."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest

from model.policy.exploration import ExplorationPredictor
from model.policy.policies import (
    EpsilonGreedyPolicy,
    GreedyPolicy,
    KeyedRandom,
    Policy,
    SoftmaxPolicy,
    capped_softmax,
    systematic_sample,
    top_k_indices,
)
from model.recommenders.baseline import BaselinePredictor
from model.types import PredictionContext, ScoredItem, SeqItem

CANDS = tuple(ScoredItem(f"i{j}", s) for j, s in
              enumerate([3.0, 2.5, 2.4, 1.0, 0.9, 0.5, 0.2, 0.1, 0.0, -1.0]))


def empirical(policy: Policy, k: int, n: int) -> Counter[str]:
    shown: Counter[str] = Counter()
    for t in range(n):
        for item in policy.choose(CANDS, k, KeyedRandom(7, f"e{t}")).items:
            shown[item.item_id] += 1
    return shown


@pytest.mark.parametrize("make", [
    lambda: EpsilonGreedyPolicy(start=0.2, floor=0.2),
    lambda: SoftmaxPolicy(temperature=0.7),
    lambda: SoftmaxPolicy(temperature=5.0),
])
@pytest.mark.parametrize("k", [1, 3])
def test_propensities_match_empirical_frequencies(make: object, k: int) -> None:
    policy: Policy = make()  # type: ignore[operator]
    want = policy.inclusion([c.score for c in CANDS], k)
    assert sum(want) == pytest.approx(k)
    n = 40_000
    shown = empirical(policy, k, n)
    assert sum(shown.values()) == k * n  # exactly k distinct items every time
    for c, p in zip(CANDS, want, strict=True):
        # 5 standard errors of a binomial proportion (+ a little for p near 0)
        tol = 5 * (p * (1 - p) / n) ** 0.5 + 1e-3
        assert shown[c.item_id] / n == pytest.approx(p, abs=tol), c.item_id
    # and each shown item carries exactly that probability
    choice = policy.choose(CANDS, k, KeyedRandom(1, "x"))
    by_id = {c.item_id: p for c, p in zip(CANDS, want, strict=True)}
    assert all(i.propensity == pytest.approx(by_id[i.item_id]) for i in choice.items)


@pytest.mark.parametrize("policy", [EpsilonGreedyPolicy(start=0.5, floor=0.1),
                                    SoftmaxPolicy(temperature=1.0), GreedyPolicy()])
def test_single_slot_propensities_sum_to_one(policy: Policy) -> None:
    probs = policy.inclusion([c.score for c in CANDS], 1)
    assert sum(probs) == pytest.approx(1.0, abs=1e-12)
    assert all(0.0 <= p <= 1.0 for p in probs)


def test_epsilon_greedy_formula_and_decay_to_floor() -> None:
    pol = EpsilonGreedyPolicy(start=0.5, floor=0.05, decay_steps=100)
    probs = pol.inclusion([c.score for c in CANDS], 1)
    assert probs[0] == pytest.approx(0.5 + 0.5 / 10)
    assert probs[5] == pytest.approx(0.5 / 10)
    eps = []
    for t in range(3000):
        eps.append(pol.epsilon)
        pol.choose(CANDS, 2, KeyedRandom(0, str(t)))
    assert eps[0] == 0.5 and eps[100] == pytest.approx(0.25)
    assert all(a >= b for a, b in zip(eps, eps[1:], strict=False))
    assert eps[-1] == 0.05  # the floor holds
    assert "eps=0.0500" in pol.label()


def test_softmax_caps_at_one_and_low_temperature_is_greedy() -> None:
    scores = [10.0, 9.9, 0.0, 0.0]
    probs = capped_softmax(scores, 2, 1.0)
    assert sum(probs) == pytest.approx(2.0)
    assert max(probs) <= 1.0 and probs[0] == 1.0
    cold = capped_softmax([c.score for c in CANDS], 3, 1e-4)
    assert cold[:3] == [1.0, 1.0, 1.0] and sum(cold[3:]) == pytest.approx(0.0, abs=1e-9)
    assert capped_softmax([1.0, 2.0], 3, 1.0) == [1.0, 1.0]  # fewer candidates than slots


def test_systematic_sampling_is_exact_for_awkward_probabilities() -> None:
    probs = [1.0, 0.999999, 0.5, 0.3, 0.2, 1e-6, 0.000001]
    k = round(sum(probs))
    probs = [p * k / sum(probs) if p < 1 else p for p in probs]
    for t in range(2000):
        got = systematic_sample(probs, k, KeyedRandom(3, str(t)))
        assert len(got) == len(set(got)) == k
        assert 0 in got


def test_same_key_same_slate_other_key_other_slate() -> None:
    pol = SoftmaxPolicy(temperature=2.0)
    a = [pol.choose(CANDS, 3, KeyedRandom(11, f"ev{t}")).items for t in range(50)]
    b = [pol.choose(CANDS, 3, KeyedRandom(11, f"ev{t}")).items for t in range(50)]
    c = [pol.choose(CANDS, 3, KeyedRandom(12, f"ev{t}")).items for t in range(50)]
    assert a == b
    assert a != c


def _ctx(i: int, items: Sequence[str]) -> PredictionContext:
    seq = tuple(SeqItem(it, "view", 1000 * j) for j, it in enumerate(items))
    return PredictionContext("u1", f"e{i}", items[-1], "view", 1000 * len(items), None, seq,
                             {}, True, 3)


def test_exploration_predictor_logs_pool_and_shadow_without_showing_it() -> None:
    inner = BaselinePredictor()
    hist = [f"i{j}" for j in range(40)]
    inner.predict_batch([_ctx(j, hist[: j + 1]) for j in range(40)])  # learn some items
    pred = ExplorationPredictor(inner, EpsilonGreedyPolicy(start=1.0, floor=1.0), pool=12,
                                seed=5, shadow=GreedyPolicy())
    out = pred.predict_batch([_ctx(100 + t, hist[:20]) for t in range(30)])
    for p in out:
        assert p.trace is not None and len(p.trace.candidates) == 12
        assert len(p.items) == 3
        assert sum(c.propensity for c in p.trace.candidates) == pytest.approx(3.0)
        assert all(i.propensity == pytest.approx(3 / 12) for i in p.items)  # eps = 1
        top = {c.item_id for c in sorted(p.trace.candidates, key=lambda c: -c.score)[:3]}
        assert set(p.trace.shadow_items) == top  # the shadow would have shown the top 3
        assert sum(p.trace.shadow_inclusion) == pytest.approx(3.0)
    assert any(p.trace is not None and p.trace.explored for p in out)
    assert len({tuple(i.item_id for i in p.items) for p in out}) > 1  # really random
    again = ExplorationPredictor(BaselinePredictor(), GreedyPolicy(), pool=12)
    assert again.predict_batch([_ctx(1, ["a"])])[0].items == ()  # cold start: nothing known


@pytest.mark.parametrize("scores", [
    [3.0, 2.0, 2.0, 1.0, 0.5],  # ranked, with a tie
    [1.0, 3.0, 2.0, 2.0, 0.5],  # not ranked
    [2.0, 2.0, 2.0, 2.0, 2.0],  # all tied
    [0.5, 1.0, 2.0, 3.0, 4.0],  # ascending
    [3.0, 2.0, 1.0, 1.5, 0.0],  # ranked but for one pair
])
@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_greedy_slates_match_a_full_stable_sort_whatever_the_order(scores: list[float],
                                                                   k: int) -> None:
    """Ranked pools take a shortcut; it must pick and order exactly what sorting would."""
    cands = tuple(ScoredItem(f"i{j}", s) for j, s in enumerate(scores))
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:k]
    assert top_k_indices(scores, k) == order
    for policy in (GreedyPolicy(), EpsilonGreedyPolicy(start=0.0, floor=0.0)):
        choice = policy.choose(cands, k, KeyedRandom(1, "e"))
        assert [c.item_id for c in choice.items] == [f"i{j}" for j in order]
        assert not choice.explored
        assert sum(choice.inclusion) == pytest.approx(min(k, len(scores)))
