"""The Recommender protocol every method implements, and loading one from an artifact dir."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Protocol

import torch

from model.types import SeqItem

METHODS: tuple[str, ...] = ("popularity", "covisitation", "gru", "sasrec", "hybrid",
                            "hybrid_without_sequence")

Ranked = list[tuple[str, float]]


class Recommender(Protocol):
    """Top-k next items for user sequences (oldest first, trigger last)."""

    method: str

    def recommend(self, seqs: Sequence[Sequence[SeqItem]], k: int,
                  exclude: Sequence[Collection[str]]) -> list[Ranked]: ...

    def save(self, directory: Path) -> None: ...


def load_recommender(directory: Path, method: str, device: torch.device | None = None
                     ) -> Recommender:
    """Load a saved method from `directory` (the method's own folder inside a version)."""
    if method == "popularity":
        from model.recommenders.neighbors import PopularityRecommender
        return PopularityRecommender.load(directory)
    if method == "covisitation":
        from model.recommenders.neighbors import CoVisitationRecommender
        return CoVisitationRecommender.load(directory)
    if method in ("gru", "sasrec"):
        from model.recommenders.neural import NeuralRecommender
        return NeuralRecommender.load(directory, device=device)
    if method in ("hybrid", "hybrid_without_sequence"):
        from model.recommenders.hybrid import HybridRecommender
        return HybridRecommender.load(directory)
    raise ValueError(f"unknown recommender method {method!r}; known: {', '.join(METHODS)}")
