"""Serve a published risk model next to an online recommender (the baseline) that has none."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from model.device import resolve_device
from model.predictor import Predictor, Wrapper
from model.registry import ModelRegistry
from model.risk.model import RiskScorer
from model.types import Prediction, PredictionContext

__all__ = ["RISK", "RiskOverlay", "overlay_risk"]

RISK = "risk"


class RiskOverlay(Wrapper):
    """`inner`'s predictions with the risk part from a published RiskScorer.

    model.serving.load_predictor pairs a published risk model only with a published
    recommender; without one the worker serves the online baseline, whose risk is the rule
    score. This keeps that baseline (and everything it learned online) and replaces its risk
    verdict, so a risk version published by the trainer, or rolled back to, serves whether or
    not a recommender was ever trained.
    """

    def __init__(self, inner: Predictor, scorer: RiskScorer, risk_version: str) -> None:
        super().__init__(inner)
        self.scorer = scorer
        self.risk_version = risk_version

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def version(self) -> str:
        return self.inner.version

    def predict_batch(self, contexts: Sequence[PredictionContext]) -> list[Prediction]:
        preds = self.inner.predict_batch(contexts)
        for pred, risk in zip(preds, self.scorer.score(contexts), strict=True):
            pred.risk = risk
            pred.risk_model_version = self.risk_version
        return preds

    def close(self) -> None:
        """Nothing to release: the inner predictor lives on in the overlay that replaces
        this one (a retired overlay is closed after the swap)."""


def overlay_risk(inner: Predictor, registry: ModelRegistry, version: str | None = None,
                 device: str = "auto", *, features: Collection[str] | None = None,
                 explain_above: float | None = None) -> Predictor:
    """`inner` with the risk model `version` (default: the latest); `inner` itself when no
    risk model is published. With `features` (what the stream produces), FeatureMismatch for
    a risk model that reads others; `explain_above` as in RiskScorer."""
    version = version or registry.latest(RISK)
    if version is None:
        return inner
    scorer = RiskScorer.load(registry.path(RISK, version), resolve_device(device),
                             produced=features, explain_above=explain_above)
    return RiskOverlay(inner, scorer, version)
