"""The Recommender protocol every method implements, and the method names that pick one."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Protocol

from model.types import SeqItem

__all__ = ["HYBRID_METHODS", "METHODS", "NEIGHBOR_METHODS", "NEURAL_METHODS", "Ranked",
           "Recommender"]

# The one list of recommender methods: the CLI, serving, training and evaluation read it here.
NEIGHBOR_METHODS: tuple[str, ...] = ("popularity", "covisitation")
NEURAL_METHODS: tuple[str, ...] = ("gru", "sasrec")  # the kinds of model.nets.RECOMMENDER_NETS
# the two-stage hybrid (model.recommenders.hybrid), with and without its sequence model
HYBRID_METHODS: tuple[str, ...] = ("hybrid", "hybrid_without_sequence")
METHODS: tuple[str, ...] = (*NEIGHBOR_METHODS, *NEURAL_METHODS, *HYBRID_METHODS)

Ranked = list[tuple[str, float]]


class Recommender(Protocol):
    """Top-k next items for user sequences (oldest first, trigger last)."""

    method: str

    def recommend(self, seqs: Sequence[Sequence[SeqItem]], k: int,
                  exclude: Sequence[Collection[str]]) -> list[Ranked]: ...

    def save(self, directory: Path) -> None: ...
