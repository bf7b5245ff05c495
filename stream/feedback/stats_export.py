"""Aggregate statistics of feedback records: exact, or user-level differentially private."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stream.errors import UsageError

# The noisy queries, in release order. Every one gets epsilon / len(QUERIES) (sequential
# composition); means and fractions are computed from their noisy values (post-processing).
COUNTS = ("records", "rewarded", "explored")
HISTOGRAMS = ("records_per_model_version", "records_per_policy", "engagements_per_type",
              "engaged_items")
SUMS = ("reward_sum",)
SUM_HISTOGRAMS = ("reward_sum_per_model_version",)
QUERIES = COUNTS + SUMS + HISTOGRAMS + SUM_HISTOGRAMS


@dataclass
class Aggregates:
    """The exact answers of every query on one set of records."""

    records: int = 0
    rewarded: int = 0
    explored: int = 0
    reward_sum: float = 0.0
    records_per_model_version: Counter[str] = field(default_factory=Counter)
    records_per_policy: Counter[str] = field(default_factory=Counter)
    engagements_per_type: Counter[str] = field(default_factory=Counter)
    engaged_items: Counter[str] = field(default_factory=Counter)
    reward_sum_per_model_version: defaultdict[str, float] = field(
        default_factory=lambda: defaultdict(float))


@dataclass(frozen=True)
class Query:
    """How one query is released: its epsilon share, L1 sensitivity and Laplace scale; for
    histograms whose keys come from the data, the threshold a noisy count must reach for its
    key to be shown, and the delta that threshold costs."""

    epsilon: float
    sensitivity: float
    noise_scale: float
    threshold: float | None = None
    delta: float | None = None


def _text(record: Mapping[str, Any], name: str) -> str | None:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(f"record {record.get('rec_id')}: {name} is not a string")
    return value


def _reward(record: Mapping[str, Any]) -> float:
    value = record.get("reward", 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"record {record.get('rec_id')}: reward is not a finite number")
    return float(value)


def bound_contributions(records: Iterable[Mapping[str, Any]],
                        max_per_user: int) -> list[Mapping[str, Any]]:
    """At most `max_per_user` records of each user_key: the ones with the smallest SHA-256 of
    their rec_id, a choice that is deterministic, depends on that user's records only (so it
    keeps the sensitivity bound) and favours no period of time."""
    by_user: defaultdict[str, list[tuple[str, Mapping[str, Any]]]] = defaultdict(list)
    for r in records:
        # Records without a user_key share one group: conservative, they are bounded together.
        digest = hashlib.sha256(str(r.get("rec_id")).encode()).hexdigest()
        by_user[_text(r, "user_key") or ""].append((digest, r))
    kept: list[Mapping[str, Any]] = []
    for user in sorted(by_user):
        rows = sorted(by_user[user], key=lambda row: row[0])
        kept.extend(r for _, r in rows[:max_per_user])
    return kept


def aggregate(records: Iterable[Mapping[str, Any]], *,
              max_reward: float | None = None) -> Aggregates:
    """Exact answers; each record's reward is clamped to [0, max_reward] when one is given."""
    agg = Aggregates()
    for r in records:
        version, policy = _text(r, "model_version") or "", _text(r, "policy") or ""
        reward = _reward(r)
        if max_reward is not None:
            reward = min(max(reward, 0.0), max_reward)
        agg.records += 1
        agg.rewarded += reward > 0
        agg.explored += bool(r.get("explored"))
        agg.reward_sum += reward
        agg.records_per_model_version[version] += 1
        agg.records_per_policy[policy] += 1
        agg.reward_sum_per_model_version[version] += reward
        if (typ := _text(r, "engaged_type")) is not None:
            agg.engagements_per_type[typ] += 1
        if (item := _text(r, "engaged_item")) is not None:
            agg.engaged_items[item] += 1
    return agg


def threshold_for(noise_scale: float, max_per_user: int, delta: float) -> float:
    """The smallest noisy count at which a histogram key may be shown, so that the keys only
    one user contributed to appear with probability at most `delta` together.

    Such a user holds at most m = max_per_user records, on k <= m keys only they have, with
    counts c_1..c_k (sum <= m). Key i is shown with P(c_i + Lap(b) >= tau) =
    exp(-(tau - c_i) / b) / 2; the sum over i is largest at k = 1 (c = m) or k = m (c = 1 each),
    because it is convex in the c_i. So tau = max(m, 1 + b ln m) + b ln(1 / (2 delta)).
    """
    b, m = noise_scale, max_per_user
    return max(float(m), 1.0 + b * math.log(m)) + b * math.log(1.0 / (2.0 * delta))


def plan(epsilon: float, *, max_per_user: int, max_reward: float,
         delta: float) -> dict[str, Query]:
    """The release of every query: an equal share of epsilon each, an equal share of delta
    for each histogram whose keys come from the data."""
    if not epsilon > 0 or not math.isfinite(epsilon):
        raise UsageError(f"--epsilon must be a number > 0, not {epsilon}")
    if max_per_user < 1:
        raise UsageError(f"--max-per-user must be at least 1, not {max_per_user}")
    if not max_reward > 0 or not math.isfinite(max_reward):
        raise UsageError(f"--max-reward must be a number > 0, not {max_reward}")
    if not 0 < delta < 1:
        raise UsageError(f"--delta must be between 0 and 1 (exclusive), not {delta}")
    share = epsilon / len(QUERIES)
    out: dict[str, Query] = {}
    for name in QUERIES:
        sensitivity = float(max_per_user) * (max_reward if name in SUMS + SUM_HISTOGRAMS else 1)
        scale = sensitivity / share
        if name in HISTOGRAMS:
            d = delta / len(HISTOGRAMS)
            out[name] = Query(share, sensitivity, scale, threshold_for(scale, max_per_user, d), d)
        else:
            out[name] = Query(share, sensitivity, scale)
    return out


def laplace(rng: random.Random, scale: float) -> float:
    """One Laplace(0, scale) draw: the difference of two exponentials (no log of zero)."""
    return rng.expovariate(1.0 / scale) - rng.expovariate(1.0 / scale)


def _count(value: float) -> int:
    return max(0, round(value))


def _mean(total: float | None, count: float, lower: float, upper: float) -> float | None:
    if total is None or count < 1:
        return None
    return round(min(max(total / count, lower), upper), 4)


def release(agg: Aggregates, queries: Mapping[str, Query], rng: random.Random, *,
            max_reward: float, top: int) -> dict[str, Any]:
    """Noisy answers: Laplace noise on every count and sum, histogram keys below their
    threshold suppressed, means and fractions derived from the noisy values (and clamped)."""
    def noisy(name: str, value: float) -> float:
        return value + laplace(rng, queries[name].noise_scale)

    def histogram(name: str, counts: Mapping[str, int]) -> dict[str, float]:
        tau = queries[name].threshold
        noisy_counts = {k: noisy(name, counts[k]) for k in sorted(counts)}
        return {k: v for k, v in noisy_counts.items() if tau is None or v >= tau}

    records, rewarded, explored = (noisy(n, getattr(agg, n)) for n in COUNTS)
    reward_sum = max(0.0, noisy("reward_sum", agg.reward_sum))
    versions = histogram("records_per_model_version", agg.records_per_model_version)
    per_version_sum = {v: max(0.0, noisy("reward_sum_per_model_version",
                                         agg.reward_sum_per_model_version.get(v, 0.0)))
                       for v in sorted(agg.records_per_model_version)}
    items = histogram("engaged_items", agg.engaged_items)
    return _stats(
        records=records, rewarded=rewarded, explored=explored, reward_sum=reward_sum,
        versions=versions, policies=histogram("records_per_policy", agg.records_per_policy),
        types=histogram("engagements_per_type", agg.engagements_per_type),
        # Only versions whose count was released: the key set must pass the threshold.
        version_sums={v: per_version_sum[v] for v in versions}, items=items,
        reward_range=(0.0, max_reward), top=top)


def exact(agg: Aggregates, *, top: int) -> dict[str, Any]:
    """The exact answers in the same layout as `release`."""
    return _stats(
        records=agg.records, rewarded=agg.rewarded, explored=agg.explored,
        reward_sum=agg.reward_sum, versions=dict(agg.records_per_model_version),
        policies=dict(agg.records_per_policy), types=dict(agg.engagements_per_type),
        version_sums=dict(agg.reward_sum_per_model_version), items=dict(agg.engaged_items),
        reward_range=(-math.inf, math.inf), top=top)


def _stats(*, records: float, rewarded: float, explored: float, reward_sum: float,
           versions: Mapping[str, float], policies: Mapping[str, float],
           types: Mapping[str, float], version_sums: Mapping[str, float],
           items: Mapping[str, float], reward_range: tuple[float, float],
           top: int) -> dict[str, Any]:
    ranked = sorted(items.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return {
        "records": _count(records),
        "records_per_model_version": {k: _count(v) for k, v in sorted(versions.items())},
        "records_per_policy": {k: _count(v) for k, v in sorted(policies.items())},
        "rewarded": _count(rewarded),
        "reward_sum": round(reward_sum, 3),
        "mean_reward": _mean(reward_sum, records, *reward_range),
        "reward_sum_per_model_version": {k: round(v, 3) for k, v in sorted(version_sums.items())},
        "mean_reward_per_model_version": {
            k: _mean(version_sums.get(k), v, *reward_range) for k, v in sorted(versions.items())},
        "engagements_per_type": {k: _count(v) for k, v in sorted(types.items())},
        "explored": _count(explored),
        "explored_fraction": _mean(explored, records, 0.0, 1.0),
        "top_items": [{"item_id": k, "count": _count(v)} for k, v in ranked],
    }


def export_stats(records: Iterable[Mapping[str, Any]], *, epsilon: float | None = None,
                 max_per_user: int = 20, max_reward: float = 5.0, delta: float = 1e-6,
                 top: int = 10, seed: int | None = None) -> dict[str, Any]:
    """The export: exact aggregates without epsilon; with it, (epsilon, delta)-differentially
    private ones with respect to all records of one user_key (noise from the OS's CSPRNG
    unless a seed is given, which is for tests and makes the export reproducible, and so not
    private to anyone who knows the seed)."""
    if top < 1:
        raise UsageError(f"--top must be at least 1, not {top}")
    if epsilon is None:
        return {"epsilon": None, "delta": None, "max_per_user": None, "max_reward": None,
                "seed": None, "epsilon_split": None, "queries": {},
                "stats": exact(aggregate(records), top=top),
                "protected": [], "not_protected": [
                    "Nothing: these are exact aggregates without noise. A small count (an "
                    "item engaged with by one user, a model version served to few) can reveal "
                    "what one user did. Pass --epsilon for a differentially private export."]}
    queries = plan(epsilon, max_per_user=max_per_user, max_reward=max_reward, delta=delta)
    agg = aggregate(bound_contributions(records, max_per_user), max_reward=max_reward)
    rng = random.Random(seed) if seed is not None else random.SystemRandom()
    stats = release(agg, queries, rng, max_reward=max_reward, top=top)
    return {
        "epsilon": epsilon, "delta": delta, "max_per_user": max_per_user,
        "max_reward": max_reward, "seed": seed,
        "epsilon_split": (f"equal: epsilon / {len(QUERIES)} = {epsilon / len(QUERIES):.6g} to "
                          f"each of the {len(QUERIES)} noisy queries (sequential composition); "
                          f"delta / {len(HISTOGRAMS)} to each histogram whose keys come from "
                          "the data; means and fractions are computed from the noisy values "
                          "at no extra cost"),
        "queries": {name: {k: v for k, v in vars(q).items() if v is not None}
                    for name, q in queries.items()},
        "stats": stats,
        "protected": protected(epsilon, delta, max_per_user, max_reward),
        "not_protected": not_protected(epsilon, seed),
    }


def protected(epsilon: float, delta: float, max_per_user: int,
              max_reward: float) -> list[str]:
    return [
        f"Every number and every name (model version, policy, engagement type, item id) in "
        f"this export is ({epsilon:g}, {delta:g})-differentially private with respect to one "
        f"user_key: its distribution changes by at most a factor e^{epsilon:g} (plus "
        f"{delta:g}) whether or not all of that user's feedback records are in the input.",
        f"That holds under the contribution bound: each user_key counts with at most "
        f"{max_per_user} records (the rest are dropped before aggregation, picked by a hash "
        f"of rec_id) and each record's reward is clamped to [0, {max_reward:g}].",
        "Counts and sums carry Laplace noise of scale sensitivity / epsilon share (see "
        "queries); means and fractions are noisy sum / noisy count, clamped to their range.",
        "A model version, policy, engagement type or item is shown only when its noisy count "
        "reaches the query's threshold; delta bounds the chance that a name only one user "
        "contributed to is shown anyway. Names below it are left out without saying so.",
    ]


def not_protected(epsilon: float, seed: int | None) -> list[str]:
    out = [
        f"This export used --seed {seed}: anyone who knows the seed can recompute the noise "
        "and subtract it, so it is NOT private. Use a seed for tests only."] if seed is not None \
        else []
    return out + [
        "The feedback topic and files this export reads: they are pseudonymised (user_key is "
        "a keyed HMAC of the user id), not anonymised, and stay as sensitive as before.",
        f"Repeated exports: privacy loss adds up. Each export of overlapping data spends "
        f"another epsilon = {epsilon:g} (and delta); k exports cost k times as much.",
        "One person with several user_keys (several accounts or user ids, or records on both "
        "sides of a LAMSTREAM_PSEUDONYM_KEY rotation) is protected only at a multiple of "
        "epsilon (group privacy).",
        "What the aggregates say about groups (e.g. that a model version or an item does "
        "worse): differential privacy hides whether one user is in the data, not population "
        "facts.",
        "Accuracy: records beyond the per-user bound are dropped, so heavy users are "
        "under-represented (how many were dropped is not released: it is not private); the "
        "noise dominates counts smaller than a few noise scales.",
        "Floating-point side channels: noise is sampled in floating point, whose low-order "
        "bits can leak (Mironov 2012); rounding counts to integers and sums to 3 decimals "
        "reduces but does not formally remove this.",
    ]
