"""Fit every recommender method on one temporal split, pick the served one on a validation
slice before the test part, and score them all on the same test cases."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from model.errors import ConfigError
from model.recommenders.base import METHODS, NEURAL_METHODS, Recommender
from model.recommenders.counts import CLASSIC_COVISITATION
from model.recommenders.hybrid import HYBRID, WITHOUT_SEQUENCE, HybridRecommender
from model.recommenders.neighbors import CoVisitationRecommender, PopularityRecommender
from model.train.data import Case, Split, cases_between, rank_cases
from model.train.hybrid import HybridConfig, before, fit_hybrid, time_slices
from model.train.metrics import hit_curve, rank_metrics
from model.train.neural import TrainConfig, train_sequence_model
from model.train.progress import step
from model.train.sequence import SeqTrainConfig

__all__ = ["Comparison", "K", "PRIMARY", "candidate_recall", "compare_methods", "score_cases",
           "tune_covisitation"]

K = 20
# The served method is the best on the validation slice by PRIMARY (then TIEBREAK): HR@20 is
# what the acceptance targets compare, and the test part never takes part in the choice.
PRIMARY = "hr@20"
TIEBREAK = "ndcg@20"
VALID_CASES = 2000


def score_cases(rec: Recommender, cases: Sequence[Case], k: int = K, batch: int = 256
                ) -> tuple[dict[str, float], float]:
    """Metrics over the cases plus inference milliseconds per case (batched)."""
    t0 = time.perf_counter()
    ranked = rank_cases(rec, cases, k, batch)
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


def candidate_recall(rec: HybridRecommender, cases: Sequence[Case], batch: int = 256
                     ) -> dict[str, float]:
    """The share of cases whose target is among the hybrid's candidates, and how many
    candidates a case gets, as `candidate_recall@N` (N: the most a case can get)."""
    hits = total = 0
    for b in range(0, len(cases), batch):
        part = cases[b: b + batch]
        got = rec.batch([c.history for c in part], [{c.history[-1].item_id} for c in part])
        for r, c in enumerate(part):
            ids = got.cand.ids[r][got.cand.mask[r]].tolist()
            hits += c.target in {rec.tables.name(i, got.enc) for i in ids}
            total += len(ids)
    cap = rec.tables.cfg.total + rec.top_k
    return {f"candidate_recall@{cap}": hits / max(1, len(cases)),
            "candidates_per_case": total / max(1, len(cases))}


def tune_covisitation(base: CoVisitationRecommender, valid: Sequence[Case],
                      say: Callable[[str], None],
                      grid: Sequence[float] = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)
                      ) -> tuple[float, dict[str, float]]:
    """The repeat weight with the best validation PRIMARY, and its validation metrics."""
    best: tuple[float, dict[str, float]] | None = None
    for w in grid:
        base.repeat_weight = w
        m, _ = score_cases(base, valid)
        if best is None or (m[PRIMARY], m[TIEBREAK]) > (best[1][PRIMARY], best[1][TIEBREAK]):
            best = (w, m)
    assert best is not None
    base.repeat_weight = best[0]
    say(f"covisitation: repeat weight {best[0]} (validation {PRIMARY} {best[1][PRIMARY]:.4f})")
    return best


class Stage(NamedTuple):
    """The validation stage: users' events before the validation slice, and its cases."""

    users: dict[str, list[Any]]
    cases: list[Case]


class Fitted(NamedTuple):
    valid: dict[str, float]  # validation metrics of the method fit before the slice
    model: Recommender  # the method fit on the whole training period (what test scores)
    notes: dict[str, Any]


@dataclass
class Comparison:
    methods: dict[str, dict[str, Any]]
    served: str
    split: dict[str, Any]
    models: dict[str, Recommender] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    # HR@K for K = 1..curve_k per method on the test cases (compare_methods' curve_k > 0)
    curves: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"methods": self.methods, "served": self.served, "split": self.split,
                "notes": self.notes}


class _Fitter:
    """Fits each method twice, before the validation slice and on the whole training period
    (the hybrid's slices are trained once and shared by both of its methods)."""

    def __init__(self, split: Split, stage: Stage, train_cfg: TrainConfig,
                 hybrid_cfg: HybridConfig, say: Callable[[str], None]) -> None:
        self.split, self.stage, self.cfg, self.hcfg, self.say = (split, stage, train_cfg,
                                                                 hybrid_cfg, say)
        # (validation stage, final) pairs of (hybrid, hybrid_without_sequence)
        self._hybrid: tuple[tuple[HybridRecommender, HybridRecommender], ...] = ()

    def fit(self, method: str) -> Fitted:
        split, stage = self.split, self.stage
        if method == "popularity":
            m, _ = score_cases(PopularityRecommender.fit(stage.users.values()), stage.cases)
            return Fitted(m, PopularityRecommender.fit(split.train.values()), {})
        if method == "covisitation":
            w, m = tune_covisitation(CoVisitationRecommender.fit(stage.users.values()),
                                     stage.cases, self.say)
            classic = CoVisitationRecommender.fit(split.train.values(), repeat_weight=w,
                                                  **CLASSIC_COVISITATION)
            cm, _ = score_cases(classic, split.test)
            notes = {"covisitation_repeat_weight": w, "covisitation_classic_sessions":
                     {k: round(v, 5) for k, v in cm.items()}}
            return Fitted(m, CoVisitationRecommender.fit(split.train.values(), repeat_weight=w),
                          notes)
        if method in NEURAL_METHODS:
            rec, report = train_sequence_model(method, split.train, self.cfg, self.say,
                                               validation=(stage.users, stage.cases))
            return Fitted(report.valid_metrics, rec, {f"{method}_epochs": report.epochs,
                                                      f"{method}_training": report.to_json()})
        if method in (HYBRID, WITHOUT_SEQUENCE):
            return self._fit_hybrid(method)
        raise ConfigError(f"unknown method {method!r}; known: {', '.join(METHODS)}")

    def _fit_hybrid(self, method: str) -> Fitted:
        split, stage, hcfg = self.split, self.stage, self.hcfg
        notes: dict[str, Any] = {}
        if not self._hybrid:
            seq_cfg = SeqTrainConfig(budget_s=self.cfg.budget_s, seed=self.cfg.seed)
            fit = fit_hybrid(split.train, split.categories, hcfg, seq_cfg, self.say)
            notes["hybrid_training"] = fit.notes
            valid = fit.build(stage.users, split.categories, hcfg)
            if hcfg.refit_rankers:
                sl = fit.slices
                cases, _ = cases_between(split.train, sl.t_valid, sl.t_end,
                                         split.info["max_history"], hcfg.ranker_cases, hcfg.seed)
                fit = fit.refit(valid, cases, hcfg, self.say)
            self._hybrid = (valid, fit.build(split.train, split.categories, hcfg))
        pick = 0 if method == HYBRID else 1
        m, _ = score_cases(self._hybrid[0][pick], stage.cases)
        return Fitted(m, self._hybrid[1][pick], notes)


def compare_methods(split: Split, methods: Sequence[str] = METHODS,
                    train_cfg: TrainConfig = TrainConfig(),
                    progress: Callable[[str], None] | None = None,
                    hybrid_cfg: HybridConfig = HybridConfig(),
                    curve_k: int = 0) -> Comparison:
    """Fit each method before the validation slice (the last `hybrid_cfg.valid_frac` of the
    training events) and score it there; fit it on the whole training period and score it on
    split.test. The best on validation by PRIMARY is served. With `curve_k`, also HR@K for
    K = 1..curve_k of each method on split.test (Comparison.curves)."""
    say = progress or (lambda _m: None)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sl = time_slices(split.train, hybrid_cfg)
    valid, _ = cases_between(split.train, sl.t_valid, sl.t_end, split.info["max_history"],
                             VALID_CASES, hybrid_cfg.seed)
    if not valid:
        raise ConfigError("the validation slice has no next-item cases (too little data?)")
    fitter = _Fitter(split, Stage(before(split.train, sl.t_valid), valid), train_cfg, hybrid_cfg,
                     say)
    results: dict[str, dict[str, Any]] = {}
    models: dict[str, Recommender] = {}
    notes: dict[str, Any] = {}
    for i, method in enumerate(methods):
        step(progress, i, len(methods), f"fitting {method}")
        t0 = time.perf_counter()
        fitted = fitter.fit(method)
        train_s = time.perf_counter() - t0
        metrics, infer_ms = score_cases(fitted.model, split.test)
        if isinstance(fitted.model, HybridRecommender):
            metrics.update(candidate_recall(fitted.model, split.test))
        results[method] = {**{k: round(v, 5) for k, v in metrics.items()},
                           "valid": {k: round(v, 5) for k, v in fitted.valid.items()},
                           "train_s": round(train_s, 2), "infer_ms_per_case": round(infer_ms, 4)}
        models[method] = fitted.model
        notes.update(fitted.notes)
        say(f"{method}: " + ", ".join(f"{k} {v}" for k, v in results[method].items()))
        step(progress, i + 1, len(methods), f"{method} done")
    rep = sum(any(e.item_id == c.target for e in c.history) for c in split.test)
    notes["repeat_target_share"] = round(rep / max(1, len(split.test)), 4)
    served = max(results, key=lambda m: (results[m]["valid"].get(PRIMARY, 0.0),
                                         results[m]["valid"].get(TIEBREAK, 0.0)))
    notes["served_by"] = f"{PRIMARY} (then {TIEBREAK}) on the validation slice"
    info = {**split.info, "ranker_from_ms": sl.t_ranker, "valid_from_ms": sl.t_valid,
            "valid_cases": len(valid)}
    targets = [c.target for c in split.test]
    curves = {m: hit_curve(rank_cases(r, split.test, curve_k), targets, curve_k)
              for m, r in models.items()} if curve_k > 0 else {}
    return Comparison(results, served, info, models, notes, curves)
