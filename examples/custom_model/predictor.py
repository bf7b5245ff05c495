"""A user's own torch model (TasteNet) behind lamstream's Predictor seam (TastePredictor)."""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence

import torch
from torch import nn

from model.types import Prediction, PredictionContext, Reason, RiskOutput, ScoredItem

# the items this model can recommend: in your code, your catalogue
CATALOGUE: tuple[str, ...] = tuple(f"item-{i}" for i in range(100))
BUCKETS = 1024  # item ids hash into this many embedding rows, so unknown items still work
RISK_FEATURES = ("count_purchase_1m", "distinct_devices_24h", "new_device", "spend_1h")


def _bucket(item_id: str) -> int:
    return zlib.crc32(item_id.encode()) % BUCKETS


class TasteNet(nn.Module):
    """The user's taste: recency-weighted mean of their items' embeddings, scored against
    every catalogue item; and a logistic risk score over a few features."""

    def __init__(self, dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.items = nn.Parameter(torch.randn(BUCKETS, dim, generator=g, dtype=torch.float64))
        self.risk = nn.Linear(len(RISK_FEATURES), 1, dtype=torch.float64)
        with torch.no_grad():
            self.risk.weight.copy_(torch.tensor([[0.9, 0.7, 0.5, 0.01]], dtype=torch.float64))
            self.risk.bias.fill_(-4.0)
        self.register_buffer("catalogue", torch.tensor([_bucket(i) for i in CATALOGUE]))

    def forward(self, history: torch.Tensor, weights: torch.Tensor,
                features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """history, weights: (batch, length) buckets and recency weights (0 = padding);
        features: (batch, len(RISK_FEATURES)). Returns catalogue scores and risk."""
        taste = (self.items[history] * weights[..., None]).sum(1)
        scores = taste @ self.items[self.catalogue].T
        return scores, torch.sigmoid(self.risk(features)).squeeze(1)


class TastePredictor:
    """What lamstream's worker calls: one Prediction per context, from a thread of its own."""

    name = "custom-torch"

    def __init__(self, net: TasteNet, version: str = "1.0") -> None:
        self.net = net.eval()
        self.version = version

    def predict_batch(self, contexts: Sequence[PredictionContext]) -> list[Prediction]:
        if not contexts:
            return []
        length = max(len(c.sequence) for c in contexts) or 1
        history = torch.zeros(len(contexts), length, dtype=torch.long)
        weights = torch.zeros(len(contexts), length, dtype=torch.float64)
        for row, c in enumerate(contexts):
            for age, item in enumerate(reversed(c.sequence)):  # the newest weighs most
                history[row, age] = _bucket(item.item_id)
                weights[row, age] = 1.0 / (1 + age)
        features = torch.tensor([[c.features.get(f, 0.0) for f in RISK_FEATURES]
                                 for c in contexts], dtype=torch.float64)
        with torch.inference_mode():
            scores, risk = self.net(history, weights, features)
        return [self._prediction(c, scores[row], float(risk[row]))
                for row, c in enumerate(contexts)]

    def _prediction(self, c: PredictionContext, scores: torch.Tensor,
                    risk: float) -> Prediction:
        items: tuple[ScoredItem, ...] = ()
        if c.recommend and c.k > 0:
            banned = c.exclude_items | {c.item_id}
            order = torch.argsort(scores, descending=True, stable=True).tolist()
            ranked = [(CATALOGUE[i], float(scores[i])) for i in order
                      if CATALOGUE[i] not in banned]
            items = tuple(ScoredItem(item, score) for item, score in ranked[: c.k])
        reasons = tuple(Reason(f, c.features.get(f, 0.0), w * c.features.get(f, 0.0))
                        for f, w in zip(RISK_FEATURES, self.net.risk.weight[0].tolist(),
                                        strict=True) if c.features.get(f, 0.0) > 0)
        return Prediction(items=items, risk=RiskOutput(risk, reasons), model=self.name,
                          model_version=self.version, risk_model_version=self.version)

    def learn_batch(self, contexts: Sequence[PredictionContext]) -> None:
        """Frozen: this model is trained offline, by its owners."""


def make_predictor() -> TastePredictor:
    """The factory lamstream calls (LAMSTREAM_PREDICTOR=custom_model:make_predictor).

    Loads trained weights from $CUSTOM_MODEL_WEIGHTS (a state_dict saved with torch.save)
    when set; otherwise a seeded, untrained net, which is enough to see it served.
    """
    net = TasteNet()
    weights = os.environ.get("CUSTOM_MODEL_WEIGHTS")
    if weights:
        net.load_state_dict(torch.load(weights, weights_only=True))
    return TastePredictor(net, version=os.environ.get("CUSTOM_MODEL_VERSION", "1.0"))
