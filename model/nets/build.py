"""Pick a recommender net by name: the one table of net kinds and a builder over it."""

from __future__ import annotations

from typing import Any

from model.errors import ConfigError
from model.nets.base import SeqRecConfig, SeqRecNet
from model.nets.gru import GRURec
from model.nets.sasrec import SASRec

__all__ = ["RECOMMENDER_NETS", "build_recommender"]

# keyed by the same names as model.recommenders.base.NEURAL_METHODS (a test keeps them equal)
RECOMMENDER_NETS: dict[str, type[SeqRecNet]] = {"sasrec": SASRec, "gru": GRURec}


def build_recommender(kind: str, config: SeqRecConfig | dict[str, Any]) -> SeqRecNet:
    """A fresh net of the given kind ("sasrec" or "gru")."""
    cls = RECOMMENDER_NETS.get(kind)
    if cls is None:
        raise ConfigError(f"unknown recommender net {kind!r}; known: {sorted(RECOMMENDER_NETS)}")
    cfg = config if isinstance(config, SeqRecConfig) else SeqRecConfig(**config)
    return cls(cfg)
