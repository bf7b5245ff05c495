"""Off-policy estimators on synthetic logs whose true value is known exactly."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import pytest

from model.policy.ope import evaluate, policy_target, shadow_target, slate_epsilon, slate_weight
from model.policy.policies import EpsilonGreedyPolicy, GreedyPolicy, KeyedRandom, SoftmaxPolicy
from model.types import ScoredItem

N_CANDS, K = 8, 3


def synthetic(n: int, seed: int) -> tuple[list[dict[str, Any]], float, float]:
    """Logs of an epsilon-greedy slate policy; the user engages with at most one shown
    item. The ranker's scores are only loosely related to what users like, so the
    exploring target policy is worth something else than the logging one. Returns the
    records, the target's true value and the logging policy's true value."""
    rng = random.Random(seed)
    logging = EpsilonGreedyPolicy(start=0.3, floor=0.3)
    target = SoftmaxPolicy(temperature=0.5)
    records = []
    v_target = v_logging = 0.0
    for i in range(n):
        scores = [rng.gauss(0, 1) for _ in range(N_CANDS)]
        # users partly disagree with the ranker
        taste = [0.5 * rng.gauss(0, 1) - 1.5 * s for s in scores]
        z = sum(math.exp(x) for x in taste)
        p = [0.6 * math.exp(x) / z for x in taste]  # engagement prob. per shown item
        weight = rng.choices([1.0, 2.0, 5.0], weights=[0.6, 0.3, 0.1])[0]
        cands = [{"item_id": f"i{j}", "score": s} for j, s in enumerate(scores)]
        pool = [ScoredItem(c["item_id"], c["score"]) for c in cands]
        mu = logging.inclusion(scores, K)
        pi = target.inclusion(scores, K)
        v_target += weight * sum(a * b for a, b in zip(pi, p, strict=True))
        v_logging += weight * sum(a * b for a, b in zip(mu, p, strict=True))
        choice = logging.choose(pool, K, KeyedRandom(seed, str(i)))
        shown = [s.item_id for s in choice.items]
        idx = [int(s[1:]) for s in shown]
        u = rng.random()
        engaged = None
        cum = 0.0
        for item, j in zip(shown, idx, strict=True):
            cum += p[j]
            if u < cum:
                engaged = item
                break
        records.append({
            "rec_id": f"r{i}",
            "candidates": [{**c, "propensity": m} for c, m in zip(cands, mu, strict=True)],
            "shown": [{"item_id": s} for s in shown], "engaged_item": engaged,
            "reward": weight if engaged else 0.0, "shadow_inclusion": pi,
        })
    return records, v_target / n, v_logging / n


def test_estimators_are_unbiased_and_cis_cover_the_true_value() -> None:
    estimates: dict[str, list[float]] = {"ips": [], "snips": [], "dr": []}
    covered = {k: 0 for k in estimates}
    truths = []
    runs = 12
    for seed in range(runs):
        records, truth, v_log = synthetic(3000, seed)
        truths.append(truth)
        res = evaluate(records, shadow_target, bootstrap=200, seed=seed)
        assert res["logged"]["value"] == pytest.approx(v_log, rel=0.15)
        for key in estimates:
            estimates[key].append(res[key]["value"] - truth)
            covered[key] += res[key]["ci_low"] <= truth <= res[key]["ci_high"]
    gap = statistics.mean(truths) - statistics.mean(synthetic(3000, s)[2] for s in range(2))
    assert abs(gap) > 0.05, "the target must differ from the logging policy for a real test"
    for key, errs in estimates.items():
        # mean error over runs within 3 standard errors of 0: no bias
        se = statistics.pstdev(errs) / math.sqrt(runs)
        assert abs(statistics.mean(errs)) < 3 * se + 0.005, (key, statistics.mean(errs), se)
        assert covered[key] >= runs - 2, (key, covered[key])  # ~95% CIs


def test_recomputed_target_equals_logged_shadow_and_logging_policy_is_its_own_value() -> None:
    records, truth, v_log = synthetic(4000, 99)
    a = evaluate(records, shadow_target, bootstrap=0)
    b = evaluate(records, policy_target(SoftmaxPolicy(temperature=0.5)), bootstrap=0)
    assert a["ips"]["value"] == pytest.approx(b["ips"]["value"])
    same = evaluate(records, policy_target(EpsilonGreedyPolicy(start=0.3, floor=0.3)),
                    bootstrap=0)
    assert same["ips"]["value"] == pytest.approx(same["logged"]["value"])  # weights all 1
    assert same["dr"]["value"] == pytest.approx(same["logged"]["value"], rel=0.05)


def test_a_record_without_shadow_or_with_zero_propensity_is_refused() -> None:
    records, _, _ = synthetic(5, 1)
    del records[0]["shadow_inclusion"]
    with pytest.raises(ValueError, match="shadow"):
        evaluate(records, shadow_target, bootstrap=0)


# -- slates whose items interact: a cascade ---------------------------------------------
def cascade_value(p: list[float], weight: float) -> float:
    """Expected reward of a slate read top down, the first engaged item ending it."""
    v, go_on = 0.0, 1.0
    for x in p:
        v += go_on * x * weight
        go_on *= 1.0 - x
    return v


def cascade_logs(n: int, seed: int, target_eps: float) -> tuple[list[dict[str, Any]], float]:
    """A decaying epsilon-greedy log of cascade users (position decay 0.8, the first engaged
    item wins) whose tastes follow the ranker's scores; the target's true value per record,
    estimated on the same contexts with 20 uniform slates each."""
    rng = random.Random(seed)
    n_cands, k = 20, 5
    logging = EpsilonGreedyPolicy(start=0.5, floor=0.05, decay_steps=500)
    records = []
    truth = 0.0
    for i in range(n):
        scores = [rng.gauss(0, 1) for _ in range(n_cands)]
        appeal = [0.5 / (1 + math.exp(-(1.5 * s + rng.gauss(0, 0.5)))) for s in scores]
        weight = rng.choices([1.0, 2.0, 5.0], weights=[0.6, 0.3, 0.1])[0]

        def value(idx: list[int], appeal: list[float] = appeal, scores: list[float] = scores,
                  weight: float = weight) -> float:
            order = sorted(idx, key=lambda j: -scores[j])  # slates are shown in score order
            return cascade_value([appeal[j] * 0.8 ** r for r, j in enumerate(order)], weight)
        greedy = sorted(range(n_cands), key=lambda j: -scores[j])[:k]
        uniform = statistics.mean(value(rng.sample(range(n_cands), k)) for _ in range(20))
        truth += (1 - target_eps) * value(greedy) + target_eps * uniform
        cands = [{"item_id": f"i{j}", "score": s} for j, s in enumerate(scores)]
        label = logging.label()
        choice = logging.choose([ScoredItem(c["item_id"], c["score"]) for c in cands], k,
                                KeyedRandom(seed, str(i)))
        shown = [s.item_id for s in choice.items]
        engaged = None
        for r, item in enumerate(shown):
            if rng.random() < appeal[int(item[1:])] * 0.8 ** r:
                engaged = item
                break
        records.append({
            "rec_id": f"r{i}", "policy": label,
            "candidates": [{**c, "propensity": m}
                           for c, m in zip(cands, choice.inclusion, strict=True)],
            "shown": [{"item_id": s} for s in shown], "engaged_item": engaged,
            "reward": weight if engaged else 0.0})
    return records, truth / n


@pytest.mark.parametrize("target_eps", [1.0, 0.0])
def test_slate_estimates_cover_the_truth_when_items_interact(target_eps: float) -> None:
    runs = 5
    errs, covered = [], 0
    for seed in range(runs):
        records, truth = cascade_logs(1500, seed, target_eps)
        policy = EpsilonGreedyPolicy(start=target_eps, floor=target_eps)
        res = evaluate(records, policy_target(policy), bootstrap=100, seed=seed,
                       slate_eps=slate_epsilon(policy))
        est = res["slate_snips"]
        errs.append(est["value"] - truth)
        covered += est["ci_low"] <= truth <= est["ci_high"]
        assert res["slate_effective_sample_size"] > 50
    se = statistics.pstdev(errs) / math.sqrt(runs)
    assert abs(statistics.mean(errs)) < 3 * se + 0.005, (statistics.mean(errs), se)
    assert covered >= runs - 2  # 95% CIs; seeded, so this is the same every run


def test_slate_weights_and_when_they_are_not_known() -> None:
    records, _ = cascade_logs(50, 3, 1.0)
    explored = next(r for r in records if slate_weight(r, 1.0) > 1.0)
    eps = float(explored["policy"].split("=")[1].rstrip(")"))
    assert slate_weight(explored, 1.0) == pytest.approx(1.0 / eps)
    assert slate_weight(explored, 0.0) == 0.0  # greedy never shows an explored slate
    res = evaluate(records, policy_target(SoftmaxPolicy()), bootstrap=0, slate_eps=None)
    assert "slate_ips" not in res and "not known" in res["slate"]
    soft = [{**records[0], "policy": "softmax(T=1.0)"}, *records[1:]]
    res = evaluate(soft, policy_target(GreedyPolicy()), bootstrap=0, slate_eps=0.0)
    assert "slate_ips" not in res and "logged by a policy" in res["slate"]
