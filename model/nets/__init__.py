"""Neural architectures, one per module; `build_recommender` picks one by name."""

from __future__ import annotations

from typing import Any

from model.errors import ConfigError
from model.nets.base import SeqRecConfig, SeqRecNet
from model.nets.gru import GRURec
from model.nets.risk import RiskConfig, RiskNet
from model.nets.sasrec import SASRec

RECOMMENDER_NETS: dict[str, type[SeqRecNet]] = {"sasrec": SASRec, "gru": GRURec}


def build_recommender(kind: str, config: SeqRecConfig | dict[str, Any]) -> SeqRecNet:
    """A fresh net of the given kind ("sasrec" or "gru")."""
    cls = RECOMMENDER_NETS.get(kind)
    if cls is None:
        raise ConfigError(f"unknown recommender net {kind!r}; known: {sorted(RECOMMENDER_NETS)}")
    cfg = config if isinstance(config, SeqRecConfig) else SeqRecConfig(**config)
    return cls(cfg)


__all__ = ["GRURec", "RiskConfig", "RiskNet", "SASRec", "SeqRecConfig", "SeqRecNet",
           "build_recommender", "RECOMMENDER_NETS"]
