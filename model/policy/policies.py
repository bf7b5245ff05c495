"""Exploration policies: pick k of the ranked candidates and say how likely each was shown.

Every policy here is defined by the *inclusion probability* of each candidate (the chance it
is among the k shown; they sum to k, each is in [0, 1]) and samples a slate with exactly those
marginals. That number is what a recommendation logs as `propensity`, so off-policy estimators
(model/ope.py) can reweight logged rewards item by item. With k = 1 the inclusion
probabilities are an ordinary distribution over the candidates and sum to 1.

Randomness is keyed: each decision draws from a generator seeded by (policy seed, decision
key), so a decision is reproducible whatever the batching, and a record re-delivered after a
crash gets the same slate as the first time.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from model.errors import ConfigError
from model.types import ScoredItem

__all__ = [
    "Choice", "EpsilonGreedyPolicy", "GreedyPolicy", "KeyedRandom", "Policy", "SoftmaxPolicy",
    "capped_softmax", "make_policy", "parse_policy", "systematic_sample", "top_k_indices",
]

_MASK = (1 << 64) - 1
_EPS = 1e-12


class KeyedRandom:
    """SplitMix64 seeded from (seed, key): a few hundred ns per draw, no global state."""

    __slots__ = ("_s",)

    def __init__(self, seed: int, key: str) -> None:
        digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
        self._s = int.from_bytes(digest, "little")

    def random(self) -> float:
        """Uniform in [0, 1)."""
        self._s = z = (self._s + 0x9E3779B97F4A7C15) & _MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return ((z ^ (z >> 31)) >> 11) / 9007199254740992.0

    def below(self, n: int) -> int:
        return min(int(self.random() * n), n - 1)

    def sample(self, n: int, k: int) -> list[int]:
        """k distinct indices of range(n), uniformly (partial Fisher-Yates)."""
        idx = list(range(n))
        for i in range(min(k, n)):
            j = i + self.below(n - i)
            idx[i], idx[j] = idx[j], idx[i]
        return idx[:k]


@dataclass(frozen=True, slots=True)
class Choice:
    """A slate: the shown items (ranked by score, `propensity` = inclusion probability), the
    inclusion probability of every candidate (aligned with the input), and whether the
    policy deviated from the greedy top-k."""

    items: tuple[ScoredItem, ...]
    inclusion: tuple[float, ...]
    explored: bool


class Policy(Protocol):
    """Maps ranked candidates to a slate of k with exact inclusion probabilities."""

    name: str

    def label(self) -> str:
        """Name with the parameters in force now (logged with every decision)."""
        ...

    def inclusion(self, scores: Sequence[float], k: int) -> list[float]:
        """Inclusion probability of each candidate under the current parameters."""
        ...

    def choose(self, candidates: Sequence[ScoredItem], k: int, rng: KeyedRandom) -> Choice:
        """Sample a slate; advances decaying parameters by one decision."""
        ...


def top_k_indices(scores: Sequence[float], k: int) -> list[int]:
    """Indices of the k highest scores, ties broken by position (stable).

    Python's sort stays stable with reverse=True. Rankers hand over candidates already in
    score order: that case is recognised by one C-level comparison (a key function is
    called per element) and answered without sorting indices; this runs once per decision.
    """
    if _ranked(scores):
        return list(range(min(k, len(scores))))
    return sorted(range(len(scores)), key=scores.__getitem__, reverse=True)[:k]


def _ranked(scores: Sequence[float]) -> bool:
    """Non-increasing (so the stable descending order is the positions themselves)."""
    return sorted(scores, reverse=True) == list(scores)


_new = tuple.__new__  # NamedTuple's own constructor is several times slower (per decision)


def _slate(candidates: Sequence[ScoredItem], chosen: Sequence[int],
           inclusion: Sequence[float], greedy: Sequence[int]) -> Choice:
    if chosen is greedy and _first(greedy):  # the top k of a ranked pool: in order already
        return Choice(tuple([_new(ScoredItem, (c[0], c[1], p)) for c, p in
                             zip(candidates[:len(greedy)], inclusion, strict=False)]),
                      tuple(inclusion), False)
    order = sorted(chosen, key=[c[1] for c in candidates].__getitem__, reverse=True)
    items = tuple([_new(ScoredItem, (candidates[i][0], candidates[i][1], inclusion[i]))
                   for i in order])
    explored = len(chosen) != len(greedy) or set(chosen) != set(greedy)
    return Choice(items, tuple(inclusion), explored)


def _first(indices: Sequence[int]) -> bool:
    """indices == [0, 1, ..., len - 1] (what top_k_indices gives for a ranked pool)."""
    n = len(indices)
    return n == 0 or (indices[0] == 0 and indices[-1] == n - 1 and list(range(n)) == indices)


class GreedyPolicy:
    """Always the top k by score (propensity 1): the policy without exploration."""

    name = "greedy"

    def label(self) -> str:
        return "greedy"

    def inclusion(self, scores: Sequence[float], k: int) -> list[float]:
        top = set(top_k_indices(scores, k))
        return [1.0 if i in top else 0.0 for i in range(len(scores))]

    def choose(self, candidates: Sequence[ScoredItem], k: int, rng: KeyedRandom) -> Choice:
        scores = [c.score for c in candidates]
        top = top_k_indices(scores, k)
        return _slate(candidates, top, self.inclusion(scores, k), top)


class EpsilonGreedyPolicy:
    """With probability 1 - eps the top k, else k candidates uniformly at random.

    eps decays with the number of decisions taken, eps_t = max(floor, start * d / (d + t)),
    so exploration is heavy while the model knows little and settles at the floor. A
    candidate's inclusion probability is (1 - eps) * [in top k] + eps * k / n.
    """

    name = "epsilon_greedy"

    def __init__(self, *, start: float = 0.3, floor: float = 0.05,
                 decay_steps: float = 10_000.0, steps: int = 0) -> None:
        if not 0.0 <= floor <= start <= 1.0:
            raise ConfigError(f"need 0 <= floor ({floor}) <= start ({start}) <= 1")
        if decay_steps <= 0:
            raise ConfigError("decay_steps must be positive")
        self.start = start
        self.floor = floor
        self.decay_steps = decay_steps
        self.steps = steps
        self._label: tuple[float, str] | None = None

    @property
    def epsilon(self) -> float:
        return max(self.floor, self.start * self.decay_steps / (self.decay_steps + self.steps))

    def label(self) -> str:
        eps = self.epsilon
        cached = self._label
        if cached is None or cached[0] != eps:  # formatted once per value, not per decision
            cached = self._label = (eps, f"epsilon_greedy(eps={eps:.4f})")
        return cached[1]

    def inclusion(self, scores: Sequence[float], k: int) -> list[float]:
        n = len(scores)
        if n <= k:
            return [1.0] * n
        eps = self.epsilon
        top = set(top_k_indices(scores, k))
        base = eps * k / n
        return [base + (1.0 - eps) if i in top else base for i in range(n)]

    def choose(self, candidates: Sequence[ScoredItem], k: int, rng: KeyedRandom) -> Choice:
        scores = [c[1] for c in candidates]
        n = len(scores)
        eps = self.epsilon
        self.steps += 1
        top = top_k_indices(scores, k)
        if n <= k:
            inclusion = [1.0] * n
        else:  # (same as self.inclusion, without sorting the scores a second time)
            base = eps * k / n
            inclusion = [base] * n
            for i in top:
                inclusion[i] = base + (1.0 - eps)
        if n <= k or rng.random() >= eps:
            return _slate(candidates, top, inclusion, top)
        return _slate(candidates, rng.sample(n, k), inclusion, top)


def capped_softmax(scores: Sequence[float], k: int, temperature: float) -> list[float]:
    """Inclusion probabilities proportional to exp(score / T), capped at 1, summing to k.

    Items whose share would exceed 1 are shown for sure and the rest is renormalised
    (water-filling); with k = 1 this is the plain Boltzmann distribution.
    """
    n = len(scores)
    if n <= k:
        return [1.0] * n
    order = sorted(range(n), key=lambda i: -scores[i])
    probs = [0.0] * n
    for pos, i in enumerate(order):
        left = k - pos  # slots still to fill: the items before this one are capped at 1
        # weights relative to the best remaining item, so they cannot all underflow
        rel = [math.exp((scores[j] - scores[i]) / temperature) for j in order[pos:]]
        z = math.fsum(rel)
        if left / z < 1.0:
            for j, w in zip(order[pos:], rel, strict=True):
                probs[j] = left * w / z
            return probs
        probs[i] = 1.0
    return probs  # pragma: no cover - n > k always leaves a share below 1


def systematic_sample(inclusion: Sequence[float], k: int, rng: KeyedRandom) -> list[int]:
    """k distinct indices, each i chosen with probability inclusion[i] exactly (Madow 1949).

    Items with probability 1 are taken; the others are laid end to end in a random order
    and hit by k' evenly spaced points with a random start.
    """
    n = len(inclusion)
    sure = [i for i in range(n) if inclusion[i] >= 1.0 - _EPS]
    rest = [i for i in range(n) if inclusion[i] < 1.0 - _EPS and inclusion[i] > 0.0]
    need = k - len(sure)
    if need <= 0 or not rest:
        return sure[:k]
    order = [rest[j] for j in rng.sample(len(rest), len(rest))]
    total = math.fsum(inclusion[i] for i in order)
    scale = need / total  # removes float drift so the last point lands inside
    u = rng.random()
    chosen: list[int] = []
    cum = 0.0
    hits_before = 0
    for i in order:
        cum += inclusion[i] * scale
        hits = min(need, math.ceil(cum - u)) if cum > u else 0
        if hits > hits_before:
            chosen.append(i)
            hits_before = hits
        if hits_before >= need:
            break
    return sure + chosen


class SoftmaxPolicy:
    """Boltzmann exploration: inclusion probabilities proportional to exp(score / T).

    Low temperature approaches greedy, high temperature approaches uniform. Scores are the
    ranker's raw scores, so T is in the ranker's units.
    """

    name = "softmax"

    def __init__(self, *, temperature: float = 1.0) -> None:
        if temperature <= 0:
            raise ConfigError("temperature must be positive")
        self.temperature = temperature

    def label(self) -> str:
        return f"softmax(T={self.temperature:g})"

    def inclusion(self, scores: Sequence[float], k: int) -> list[float]:
        return capped_softmax(scores, k, self.temperature)

    def choose(self, candidates: Sequence[ScoredItem], k: int, rng: KeyedRandom) -> Choice:
        scores = [c.score for c in candidates]
        inclusion = self.inclusion(scores, k)
        chosen = systematic_sample(inclusion, k, rng)
        return _slate(candidates, chosen, inclusion, top_k_indices(scores, k))


def make_policy(name: str, *, epsilon_start: float = 0.3, epsilon_floor: float = 0.05,
                epsilon_decay_steps: float = 10_000.0, temperature: float = 1.0) -> Policy:
    """A policy by name: greedy, epsilon_greedy or softmax."""
    if name == "greedy":
        return GreedyPolicy()
    if name == "epsilon_greedy":
        return EpsilonGreedyPolicy(start=epsilon_start, floor=epsilon_floor,
                                   decay_steps=epsilon_decay_steps)
    if name == "softmax":
        return SoftmaxPolicy(temperature=temperature)
    raise ConfigError(f"unknown policy {name!r}; known: greedy, epsilon_greedy, softmax")


def parse_policy(spec: str) -> Policy:
    """`greedy`, `epsilon_greedy[:eps]` (fixed eps) or `softmax[:T]`, for evaluation CLIs."""
    name, _, arg = spec.partition(":")
    if name == "epsilon_greedy" and arg:
        eps = float(arg)
        return EpsilonGreedyPolicy(start=eps, floor=eps)
    if name == "softmax" and arg:
        return SoftmaxPolicy(temperature=float(arg))
    return make_policy(name)
