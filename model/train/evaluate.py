"""Fit every recommender method on one temporal split and score them on the same test cases."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from model.errors import ConfigError
from model.recommenders.base import METHODS, NEURAL_METHODS, Recommender
from model.recommenders.neighbors import CoVisitationRecommender, PopularityRecommender
from model.train.data import Case, Split, cases_between
from model.train.metrics import rank_metrics
from model.train.neural import TrainConfig, train_sequence_model

__all__ = ["Comparison", "K", "PRIMARY", "compare_methods", "score_cases", "tune_covisitation"]

K = 20
PRIMARY = "ndcg@20"  # the metric that picks the served method


def score_cases(rec: Recommender, cases: Sequence[Case], k: int = K, batch: int = 256
                ) -> tuple[dict[str, float], float]:
    """Metrics over the cases plus inference milliseconds per case (batched)."""
    ranked: list[list[str]] = []
    t0 = time.perf_counter()
    for b in range(0, len(cases), batch):
        chunk = cases[b: b + batch]
        out = rec.recommend([c.history for c in chunk], k,
                            [frozenset({c.history[-1].item_id}) for c in chunk])
        ranked.extend([i for i, _ in row] for row in out)
    ms = (time.perf_counter() - t0) * 1000.0 / max(1, len(cases))
    targets = [c.target for c in cases]
    metrics = rank_metrics(ranked, targets, k)
    # where the hits come from: targets the user met before (re-consumption) or new ones
    rep = [i for i, c in enumerate(cases) if any(e.item_id == c.target for e in c.history)]
    new = sorted(set(range(len(cases))) - set(rep))
    for name, idx in (("repeat", rep), ("new", new)):
        if idx:
            sub = rank_metrics([ranked[i] for i in idx], [targets[i] for i in idx], k)
            metrics[f"hr@{k}_{name}"] = sub[f"hr@{k}"]
    return metrics, ms


def tune_covisitation(split: Split, say: Callable[[str], None],
                      grid: Sequence[float] = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)) -> float:
    """Pick the repeat weight on a validation slice: fit before it, score inside it."""
    stamps = sorted(e.ts_ms for s in split.train.values() for e in s)
    if len(stamps) < 50:
        return 0.1
    t_valid = stamps[int(len(stamps) * 0.85)]
    inner = {u: [e for e in s if e.ts_ms < t_valid] for u, s in split.train.items()}
    cases, _ = cases_between(split.train, t_valid, split.t_split, 50, 2000, 1)
    if not cases:
        return 0.1
    base = CoVisitationRecommender.fit(inner.values())
    best, best_score = grid[0], -1.0
    for w in grid:
        base.repeat_weight = w
        m, _ = score_cases(base, cases)
        if m[PRIMARY] > best_score:
            best, best_score = w, m[PRIMARY]
    say(f"covisitation: repeat weight {best} (validation {PRIMARY} {best_score:.4f})")
    return best


@dataclass
class Comparison:
    methods: dict[str, dict[str, float]]
    served: str
    split: dict[str, Any]
    models: dict[str, Recommender] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"methods": self.methods, "served": self.served, "split": self.split,
                "notes": self.notes}


def compare_methods(split: Split, methods: Sequence[str] = METHODS,
                    train_cfg: TrainConfig = TrainConfig(),
                    progress: Callable[[str], None] | None = None) -> Comparison:
    """Train each method on split.train, score on split.test; the best PRIMARY is served."""
    say = progress or (lambda _m: None)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results: dict[str, dict[str, float]] = {}
    models: dict[str, Recommender] = {}
    notes: dict[str, Any] = {}
    for method in methods:
        t0 = time.perf_counter()
        rec: Recommender
        if method == "popularity":
            rec = PopularityRecommender.fit(split.train.values())
        elif method == "covisitation":
            w = tune_covisitation(split, say)
            rec = CoVisitationRecommender.fit(split.train.values(), repeat_weight=w)
            notes["covisitation_repeat_weight"] = w
        elif method in NEURAL_METHODS:
            rec, report = train_sequence_model(method, split.train, train_cfg, say)
            notes[f"{method}_epochs"] = report.epochs
            notes[f"{method}_training"] = report.to_json()
        else:
            raise ConfigError(f"unknown method {method!r}")
        train_s = time.perf_counter() - t0
        metrics, infer_ms = score_cases(rec, split.test)
        results[method] = {**{k: round(v, 5) for k, v in metrics.items()},
                           "train_s": round(train_s, 2), "infer_ms_per_case": round(infer_ms, 4)}
        models[method] = rec
        say(f"{method}: " + ", ".join(f"{k} {v}" for k, v in results[method].items()))
    rep = sum(any(e.item_id == c.target for e in c.history) for c in split.test)
    notes["repeat_target_share"] = round(rep / max(1, len(split.test)), 4)
    served = max(results, key=lambda m: (results[m][PRIMARY], results[m][f"hr@{K}"]))
    notes["served_by"] = PRIMARY
    return Comparison(results, served, split.info, models, notes)
