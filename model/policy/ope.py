"""Off-policy evaluation: a candidate policy's value from logged feedback (IPS, SNIPS, DR).

Slates are scored item by item: the reward of a recommendation is credited to the item that
earned it, and each shown item is reweighted by pi(item shown) / mu(item shown), the two
policies' inclusion probabilities (the "independent item" estimator of Li et al., WSDM
2018). That is unbiased when a recommendation's reward is the sum of per-item rewards, which
holds exactly when a user engages with at most one shown item, and the candidate policy only
shows items the logging policy could show (mu > 0).

That additivity is not enough when the items of a slate interact: a user who reads top
down and stops at the first item they like (a cascade) gets a different reward from an item
depending on what is shown above it, so an item's logged reward under a greedy slate of
strong items is not its reward in a random slate, and the item-level estimates are biased
(the simulator's cascade users show it: about -15 % for uniform slates from a near-greedy
log). For targets whose probability of a whole slate is known, `evaluate` adds the exact
*slate-level* estimator (`slate_ips`, `slate_snips`): each record is reweighted by
pi(shown slate) / mu(shown slate). It assumes nothing about how items interact, only that the
target's slates are ones the logger could show. Known here: the logger is greedy or
epsilon-greedy (its epsilon at decision time is in the record's `policy` label), and so is
the target; both draw the same sets (slates are shown in score order, so a set is a slate),
so an explored slate weighs pi_eps / mu_eps and the greedy slate by its two probabilities.

Records are plain dicts shaped like the `feedback` topic: `candidates` [{item_id, score,
propensity}] (propensity = mu), `shown` [{item_id}], `engaged_item`, `reward`, and for the
"shadow" target `shadow_inclusion` (pi per candidate).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from model.errors import DataError
from model.policy.policies import EpsilonGreedyPolicy, GreedyPolicy, Policy, top_k_indices

__all__ = [
    "Target", "Terms", "evaluate", "logged_epsilon", "policy_target", "shadow_target",
    "slate_epsilon", "slate_weight", "terms",
]

Target = Callable[[Sequence[float], int, dict[str, Any]], Sequence[float]]


def policy_target(policy: Policy) -> Target:
    """pi from the logged candidate scores, recomputed by `policy`."""
    def target(scores: Sequence[float], k: int, record: dict[str, Any]) -> Sequence[float]:
        return policy.inclusion(scores, k)
    return target


def shadow_target(scores: Sequence[float], k: int, record: dict[str, Any]) -> Sequence[float]:
    """pi as logged by the worker's shadow policy at decision time."""
    pi = record.get("shadow_inclusion")
    if pi is None or len(pi) != len(scores):
        raise DataError(f"record {record.get('rec_id')} has no shadow_inclusion for its "
                         "candidates (was LAMSTREAM_POLICY_SHADOW set?)")
    return [float(x) for x in pi]


_EPS_LABEL = re.compile(r"^epsilon_greedy\(eps=([0-9.eE+-]+)\)$")


def slate_epsilon(policy: Policy) -> float | None:
    """The policy's epsilon when its slate probabilities are known (greedy: 0), else None."""
    if isinstance(policy, GreedyPolicy):
        return 0.0
    if isinstance(policy, EpsilonGreedyPolicy):
        return policy.epsilon
    return None


def logged_epsilon(record: dict[str, Any]) -> float | None:
    """The logging policy's epsilon at decision time from the record's `policy` label
    (`greedy` -> 0), None for a policy whose slate probabilities are not known (softmax)."""
    label = str(record.get("policy", ""))
    if label == "greedy":
        return 0.0
    m = _EPS_LABEL.match(label)
    return float(m.group(1)) if m else None


def slate_weight(record: dict[str, Any], target_eps: float) -> float:
    """pi(shown slate) / mu(shown slate) for epsilon-greedy (or greedy) logger and target
    over the record's logged candidate scores; ValueError when the logger's is unknown."""
    mu_eps = logged_epsilon(record)
    if mu_eps is None:
        raise DataError(f"record {record.get('rec_id')}: logging policy "
                         f"{record.get('policy')!r} has no known slate probabilities")
    cands = record["candidates"]
    n, k = len(cands), len(record["shown"])
    if n <= k:
        return 1.0
    pos = {c["item_id"]: j for j, c in enumerate(cands)}
    shown = {pos.get(s["item_id"], -1) for s in record["shown"]}
    greedy = set(top_k_indices([float(c["score"]) for c in cands], k))
    uniform = 1.0 / math.comb(n, k)  # one k-set drawn uniformly
    is_greedy = shown == greedy
    mu = (1.0 - mu_eps) * is_greedy + mu_eps * uniform
    pi = (1.0 - target_eps) * is_greedy + target_eps * uniform
    if mu <= 0.0:
        raise DataError(f"record {record.get('rec_id')}: its slate had probability 0 under "
                         "its own logging policy (greedy label on an explored slate?)")
    return pi / mu


@dataclass(frozen=True, slots=True)
class Terms:
    """Per-record terms every estimator is a (ratio of) mean(s) of."""

    ips: list[float]  # r * w of the engaged item
    norm: list[float]  # sum of w over shown items / k (expectation 1)
    dm: list[float]  # sum over candidates of pi * q_hat
    correction: list[float]  # sum over shown of w * (r_item - q_hat)
    reward: list[float]  # the logged reward
    max_weight: float
    slate_w: list[float] | None = None  # pi(slate) / mu(slate), when known


def _rank_model(records: Sequence[dict[str, Any]], idx: Sequence[int], n_ranks: int,
                prior_strength: float = 20.0) -> list[float]:
    """q_hat(rank): mean item-level reward of shown items by their rank in the pool, shrunk
    towards the overall mean (fit on the other fold in cross-fitting)."""
    total = [0.0] * n_ranks
    count = [0.0] * n_ranks
    for i in idx:
        rec = records[i]
        ranks = _ranks(rec)
        eng = rec.get("engaged_item")
        for item in (s["item_id"] for s in rec["shown"]):
            r = ranks.get(item)
            if r is None or r >= n_ranks:
                continue
            count[r] += 1
            total[r] += float(rec["reward"]) if item == eng else 0.0
    mean = sum(total) / max(sum(count), 1.0)
    return [(t + prior_strength * mean) / (c + prior_strength)
            for t, c in zip(total, count, strict=True)]


def _ranks(rec: dict[str, Any]) -> dict[str, int]:
    cands = rec["candidates"]
    order = sorted(range(len(cands)), key=lambda i: (-float(cands[i]["score"]), i))
    return {cands[i]["item_id"]: r for r, i in enumerate(order)}


def terms(records: Sequence[dict[str, Any]], target: Target, *, folds: int = 2,
          seed: int = 0) -> Terms:
    """Compute the per-record terms, with the DR reward model cross-fitted over `folds`."""
    n = len(records)
    if n == 0:
        raise DataError("no logged feedback records to evaluate")
    n_ranks = max(len(r["candidates"]) for r in records)
    rng = random.Random(seed)
    fold = [rng.randrange(folds) for _ in range(n)]
    q_by_fold = [_rank_model(records, [i for i in range(n) if fold[i] != f], n_ranks)
                 for f in range(folds)]
    ips = [0.0] * n
    norm = [0.0] * n
    dm = [0.0] * n
    corr = [0.0] * n
    reward = [0.0] * n
    max_w = 0.0
    for i, rec in enumerate(records):
        cands = rec["candidates"]
        shown = [s["item_id"] for s in rec["shown"]]
        k = len(shown)
        scores = [float(c["score"]) for c in cands]
        pi = target(scores, k, rec)
        pos = {c["item_id"]: j for j, c in enumerate(cands)}
        ranks = _ranks(rec)
        q = q_by_fold[fold[i]]
        r = float(rec["reward"])
        reward[i] = r
        eng = rec.get("engaged_item")
        dm[i] = sum(pi[j] * q[ranks[c["item_id"]]] for j, c in enumerate(cands))
        w_sum = 0.0
        for item in shown:
            j = pos.get(item)
            if j is None:
                raise DataError(f"record {rec.get('rec_id')}: shown item {item} is not "
                                 "among its candidates")
            mu = float(cands[j]["propensity"])
            if mu <= 0:
                raise DataError(f"record {rec.get('rec_id')}: shown item with propensity 0")
            w = pi[j] / mu
            max_w = max(max_w, w)
            w_sum += w
            r_item = r if item == eng else 0.0
            corr[i] += w * (r_item - q[ranks[item]])
            if item == eng:
                ips[i] = r * w
        norm[i] = w_sum / k if k else 1.0
    return Terms(ips, norm, dm, corr, reward, max_w)


def _estimates(t: Terms, idx: Sequence[int]) -> dict[str, float]:
    n = len(idx)
    ips = math.fsum(t.ips[i] for i in idx)
    out = {
        "ips": ips / n,
        "snips": ips / max(math.fsum(t.norm[i] for i in idx), 1e-12),
        "dr": math.fsum(t.dm[i] + t.correction[i] for i in idx) / n,
        "logged": math.fsum(t.reward[i] for i in idx) / n,
    }
    if t.slate_w is not None:
        w = t.slate_w
        wr = math.fsum(w[i] * t.reward[i] for i in idx)
        out["slate_ips"] = wr / n
        out["slate_snips"] = wr / max(math.fsum(w[i] for i in idx), 1e-12)
    return out


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def evaluate(records: Sequence[dict[str, Any]], target: Target, *, bootstrap: int = 500,
             alpha: float = 0.05, seed: int = 0, slate_eps: float | None = None
             ) -> dict[str, Any]:
    """IPS, SNIPS and DR estimates of the target's value per recommendation, each with a
    percentile bootstrap CI (records resampled with replacement), next to the logged policy's
    observed mean reward. With `slate_eps` (the target is epsilon-greedy with that epsilon,
    0 for greedy: see `slate_epsilon`) and records logged by greedy or epsilon-greedy
    policies, also the slate-level `slate_ips` / `slate_snips`; otherwise `slate` says why
    they are missing."""
    t = terms(records, target, seed=seed)
    n = len(records)
    slate_note = None
    if slate_eps is None:
        slate_note = "the target policy's slate probabilities are not known (softmax/shadow)"
    elif any(logged_epsilon(r) is None for r in records):
        slate_note = "some records were logged by a policy without known slate probabilities"
    else:
        sw = [slate_weight(r, slate_eps) for r in records]
        t = Terms(t.ips, t.norm, t.dm, t.correction, t.reward, t.max_weight, sw)
    point = _estimates(t, range(n))
    rng = random.Random(seed + 1)
    boots: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(bootstrap):
        idx = [rng.randrange(n) for _ in range(n)]
        for key, v in _estimates(t, idx).items():
            boots[key].append(v)
    out: dict[str, Any] = {"n": n, "max_weight": round(t.max_weight, 4),
                           "effective_sample_size": _ess(t)}
    for key, v in point.items():
        lo, hi = ((_quantile(boots[key], alpha / 2), _quantile(boots[key], 1 - alpha / 2))
                  if bootstrap else (v, v))
        out[key] = {"value": v, "ci_low": lo, "ci_high": hi}
    if slate_note is not None:
        out["slate"] = slate_note
    else:
        assert t.slate_w is not None
        out["slate_effective_sample_size"] = _ess_of(t.slate_w)
    return out


def _ess(t: Terms) -> float:
    """Kish effective sample size of the per-record weights (how much data the estimate
    really rests on)."""
    return _ess_of(t.norm)


def _ess_of(w: Sequence[float]) -> float:
    return round(math.fsum(w) ** 2 / max(math.fsum(x * x for x in w), 1e-12), 1)
