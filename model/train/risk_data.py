"""Labelled risk records as the risk net reads them, and the scores of the model that serves.

What serves is what the stream logged: when a record was scored by the serving version, its
logged score is that model's score (exact, also for the rule score, whose spend z-score
depends on the worker's running state); otherwise the serving model scores it here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from model.encoding import encode_rows, encode_sequences, feature_matrix, seq_rows
from model.nets import RiskConfig, RiskNet
from model.recommenders.baseline import BaselinePredictor
from model.registry import ModelRegistry
from model.risk.model import RiskScorer
from model.serving import RULES_VERSION
from model.types import SeqItem
from model.vocab import ItemVocab

__all__ = [
    "RISK", "RiskExample", "RiskServing", "example_from_risk_feedback", "net_probs", "risk_records",
    "tensors",
]

RISK = "risk"  # registry and model-updates name
_NO_ITEMS = ItemVocab(1)  # the risk net reads event types and gaps only: every item is "unknown"


@dataclass(slots=True)
class RiskExample:
    """A labelled record as the candidate reads it (JSON-able): raw features in the net's
    feature order, the sequence encoded as the scorer encodes it at the net's max_len."""

    x: list[float]
    seq: list[list[int]]  # (item id, type index, gap bucket) per event, oldest first
    y: int  # 1 = fraud
    event_ts: int
    logged_version: str  # the risk model that scored it in the worker
    logged_score: float

    def to_json(self) -> list[Any]:
        return [self.x, self.seq, self.y, self.event_ts, self.logged_version,
                self.logged_score]

    @classmethod
    def from_json(cls, row: list[Any]) -> RiskExample:
        return cls(*row)


def _sequence(raw: Any) -> list[SeqItem]:
    return [SeqItem(str(e[0]), str(e[1]), int(e[2])) for e in raw or []]


def example_from_risk_feedback(rec: dict[str, Any], config: RiskConfig) -> RiskExample | None:
    """None for a record that cannot be used (no features, unknown label, bad fields)."""
    label = rec.get("label")
    features = rec.get("features")
    if label not in ("fraud", "legit") or not isinstance(features, dict):
        return None
    try:
        x = feature_matrix([features], config.feature_names)[0].tolist()
        seq = [list(r) for r in seq_rows(_sequence(rec.get("sequence")), _NO_ITEMS,
                                         config.max_len)]
        return RiskExample(x, seq, 1 if label == "fraud" else 0, int(rec.get("event_ts", 0)),
                           str(rec.get("model_version", "")), float(rec.get("score", math.nan)))
    except (TypeError, ValueError, IndexError):
        return None


def tensors(examples: Sequence[RiskExample], max_len: int
            ) -> tuple[torch.Tensor, Any, torch.Tensor]:
    """(raw features, encoded sequences, labels) of a batch of examples."""
    x = torch.tensor([e.x for e in examples], dtype=torch.float32)
    seq = encode_rows([[(r[0], r[1], r[2]) for r in e.seq] for e in examples], max_len)
    y = torch.tensor([float(e.y) for e in examples])
    return x, seq, y


def net_probs(net: RiskNet, x: torch.Tensor, seq: Any) -> list[float]:
    """Calibrated probabilities, as the worker's scorer computes them (without reasons)."""
    net.eval()
    with torch.no_grad():
        out: list[float] = net(x, seq).tolist()
    return out


class RiskServing:
    """What the workers serve: a published RiskNet, or the rule score (`rules-v1`)."""

    def __init__(self, version: str, net: RiskNet | None) -> None:
        self.version = version
        self.net = net
        self._rules = BaselinePredictor() if net is None else None

    @classmethod
    def from_registry(cls, registry: ModelRegistry, version: str | None = None) -> RiskServing:
        """`version` (default: LATEST), or the rules when no risk model is published."""
        version = version or registry.latest(RISK)
        if version is None:
            return cls(RULES_VERSION, None)
        return cls(version, RiskScorer.load(registry.path(RISK, version)).net)

    def score_records(self, records: Sequence[dict[str, Any]]) -> list[float]:
        out: list[float | None] = [float(r["score"]) if r.get("model_version") == self.version
                                   and isinstance(r.get("score"), int | float) else None
                                   for r in records]
        todo = [i for i, s in enumerate(out) if s is None]
        if todo:
            feats = [records[i]["features"] for i in todo]
            for i, s in zip(todo, self._score(feats, [_sequence(records[i].get("sequence"))
                                                      for i in todo]), strict=True):
                out[i] = s
        return [float(s) for s in out if s is not None]

    def _score(self, features: Sequence[dict[str, float]], seqs: Sequence[Sequence[SeqItem]]
               ) -> list[float]:
        if self.net is None:
            assert self._rules is not None
            return [self._rules.risk(f).score for f in features]
        cfg = self.net.config
        return net_probs(self.net, feature_matrix(features, cfg.feature_names),
                         encode_sequences(seqs, _NO_ITEMS, cfg.max_len))

    def rescore(self, examples: Sequence[RiskExample], config: RiskConfig) -> list[float] | None:
        """Scores of stored examples (encoded for `config`); None when this model reads
        another layout (other features or sequence length) that the examples cannot give."""
        if self.net is None:
            rules, names = self._rules, config.feature_names
            assert rules is not None
            return [e.logged_score if e.logged_version == self.version else
                    rules.risk(dict(zip(names, e.x, strict=True))).score for e in examples]
        cfg = self.net.config
        if cfg.feature_names != config.feature_names or cfg.max_len != config.max_len:
            return None
        out = [e.logged_score if e.logged_version == self.version else None for e in examples]
        todo = [i for i, s in enumerate(out) if s is None]
        if todo:
            x, seq, _ = tensors([examples[i] for i in todo], cfg.max_len)
            for i, s in zip(todo, net_probs(self.net, x, seq), strict=True):
                out[i] = s
        return [float(s) for s in out if s is not None]


def risk_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The risk-feedback records among decoded JSON objects (files may mix record kinds)."""
    return [r for r in records if isinstance(r, dict) and "feedback_id" in r and "label" in r]
