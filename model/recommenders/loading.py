"""Load a saved recommender of any method from its artifact folder."""

from __future__ import annotations

from pathlib import Path

import torch

from model.errors import ConfigError
from model.recommenders.base import HYBRID_METHODS, METHODS, NEURAL_METHODS, Recommender
from model.recommenders.hybrid import HybridRecommender
from model.recommenders.neighbors import CoVisitationRecommender, PopularityRecommender
from model.recommenders.neural import NeuralRecommender

__all__ = ["load_recommender"]


def load_recommender(directory: Path, method: str, device: torch.device | None = None
                     ) -> Recommender:
    """Load a saved method from `directory` (the method's own folder inside a version)."""
    if method == "popularity":
        return PopularityRecommender.load(directory)
    if method == "covisitation":
        return CoVisitationRecommender.load(directory)
    if method in NEURAL_METHODS:
        return NeuralRecommender.load(directory, device=device)
    if method in HYBRID_METHODS:
        return HybridRecommender.load(directory)
    raise ConfigError(f"unknown recommender method {method!r}; known: {', '.join(METHODS)}")
