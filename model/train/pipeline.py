"""End-to-end offline jobs: read a file, split, train, evaluate, publish to the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from model.errors import FeatureMismatch
from model.features import check_features, missing_features
from model.recommenders.base import METHODS
from model.registry import ModelRegistry
from model.train.data import load_log, temporal_split
from model.train.evaluate import Comparison, compare_methods
from model.train.neural import TrainConfig
from model.train.risk import load_labelled, train_and_evaluate_risk

__all__ = ["evaluate_recommenders", "train_recommender", "train_risk"]


def evaluate_recommenders(data: Path, *, layout: str = "auto", test: Path | None = None,
                          cfg: TrainConfig = TrainConfig(), max_events: int | None = None,
                          test_frac: float = 0.2, max_cases: int = 5000,
                          methods: tuple[str, ...] = METHODS,
                          progress: Callable[[str], None] | None = None,
                          curve_k: int = 0) -> Comparison:
    """All methods on one temporal split of `data` (or train=`data`, test=`test`); with
    `curve_k`, HR@K curves up to it too (Comparison.curves)."""
    log = load_log(data, layout, max_events)
    test_log = load_log(test, layout, max_events) if test is not None else None
    split = temporal_split(log, test_frac=test_frac, max_hist=cfg.max_len,
                           max_cases=max_cases, test_log=test_log)
    split.info["data"] = str(data) + (f" + {test}" if test else "")
    if progress:
        progress(f"split: {split.info['train_events']} train events, "
                 f"{split.info['test_cases']} test cases of {split.info['test_cases_total']}")
    return compare_methods(split, methods, cfg, progress, curve_k=curve_k)


def train_recommender(data: Path, data_dir: Path, *, layout: str = "auto",
                      test: Path | None = None, cfg: TrainConfig = TrainConfig(),
                      max_events: int | None = None, methods: tuple[str, ...] = METHODS,
                      progress: Callable[[str], None] | None = None
                      ) -> tuple[str, Comparison]:
    """Evaluate every method, then publish them all; the manifest names the winner as served."""
    comp = evaluate_recommenders(data, layout=layout, test=test, cfg=cfg,
                                 max_events=max_events, methods=methods, progress=progress)

    def write(d: Path) -> None:
        for method, rec in comp.models.items():
            rec.save(d / method)
    meta: dict[str, Any] = {
        "served": comp.served, "methods": sorted(comp.models), "metrics": comp.methods,
        "evaluation": comp.to_json(), "config": asdict(cfg),
        "data": {"path": str(data), "test_path": str(test) if test else None,
                 "layout": layout, "train_span_ms": [comp.split["train_from_ms"],
                                                     comp.split["t_split_ms"]],
                 "test_span_ms": [comp.split["t_split_ms"], comp.split["test_to_ms"]]}}
    version = ModelRegistry(data_dir).publish("recommender", write, metadata=meta)
    return version, comp


def train_risk(data: Path, data_dir: Path, *, epochs: int = 20, split: str = "random",
               base_rate: float | None = None, allow_foreign_features: bool = False,
               progress: Callable[[str], None] | None = None) -> tuple[str, dict[str, Any]]:
    """Train, evaluate and publish a risk net; its manifest declares its `features`.

    A file whose columns are not the stream's features (the ULB credit-card file) is refused
    before training (FeatureMismatch): workers would refuse to serve the net. With
    `allow_foreign_features` it is published for offline use but `LATEST` stays where it was,
    so nothing serves it by accident.
    """
    ds = load_labelled(data)
    foreign = bool(missing_features(ds.feature_names))
    if foreign and not allow_foreign_features:
        try:
            check_features(f"a risk net trained on {data.name}", ds.feature_names)
        except FeatureMismatch as exc:
            raise FeatureMismatch(f"{exc}. Nothing published (--allow-foreign-features "
                                  "publishes it for offline use, not as latest)") from None
    scorer, report = train_and_evaluate_risk(ds, epochs=epochs, split=split,
                                             base_rate=base_rate, progress=progress)
    meta = {"metrics": report["methods"], "evaluation": report,
            "features": list(scorer.feature_names),
            "data": {"path": str(data), "kind": ds.kind, "rows": len(ds.labels),
                     "span_ms": [min(ds.ts), max(ds.ts)]},
            "config": scorer.net.config.to_dict()}
    version = ModelRegistry(data_dir).publish("risk", scorer.save, metadata=meta,
                                              make_latest=not foreign)
    return version, report
