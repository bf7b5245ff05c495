"""A trained RiskNet served on PredictionContexts: probability plus named reasons."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from model.encoding import encode_sequences, feature_matrix
from model.nets import RiskConfig, RiskNet
from model.types import PredictionContext, Reason, RiskOutput
from model.vocab import ItemVocab

__all__ = ["RiskScorer"]

_NO_ITEMS = ItemVocab(1)  # the risk net reads event types and gaps only


class RiskScorer:
    """Scores contexts with a RiskNet; reasons are the features that raised the risk most."""

    method = "risk-net"

    def __init__(self, net: RiskNet, device: torch.device | None = None,
                 n_reasons: int = 3, ig_steps: int = 8) -> None:
        self.net = net.eval()
        self.device = device or torch.device("cpu")
        self.net.to(self.device)
        self.n_reasons = n_reasons
        self.ig_steps = ig_steps

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.net.config.feature_names

    def score(self, contexts: Sequence[PredictionContext]) -> list[RiskOutput]:
        if not contexts:
            return []
        x = feature_matrix([c.features for c in contexts], self.feature_names)
        seq = encode_sequences([c.sequence for c in contexts], _NO_ITEMS, self.net.config.max_len)
        cuda = self.device.type == "cuda"
        if cuda:
            x, seq = x.pin_memory(), seq.pin_memory()
        prob, contrib = self.net.attribute(x.to(self.device, non_blocking=cuda),
                                           seq.to(self.device, non_blocking=cuda),
                                           steps=self.ig_steps)
        return [RiskOutput(score=p, reasons=r) for p, r in
                zip(prob.float().cpu().tolist(), self.reasons(x, contrib.float().cpu()),
                    strict=True)]

    def reasons(self, x: torch.Tensor, contrib: torch.Tensor) -> list[tuple[Reason, ...]]:
        """Per row the features with the largest positive contributions, largest first."""
        names = self.feature_names
        k = min(self.n_reasons, len(names))
        top = torch.topk(contrib, k, dim=1)
        values = x.gather(1, top.indices.to(x.device)).tolist()
        return [tuple(Reason(names[j], xv, v) for v, j, xv in zip(vals, idx, xs, strict=True)
                      if v > 0)
                for vals, idx, xs in zip(top.values.tolist(), top.indices.tolist(), values,
                                         strict=True)]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        torch.save(state, directory / "weights.pt")
        (directory / "config.json").write_text(
            json.dumps({"kind": "risk", "config": self.net.config.to_dict()}), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path, device: torch.device | None = None) -> RiskScorer:
        cfg = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        net = RiskNet(RiskConfig.from_dict(cfg["config"]))
        state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        return cls(net, device)
