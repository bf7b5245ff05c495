"""A trained RiskNet served on PredictionContexts: probability plus named reasons."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path

import torch

from model.encoding import encode_sequences, feature_matrix
from model.features import check_features
from model.nets import RiskConfig, RiskNet
from model.types import PredictionContext, Reason, RiskOutput
from model.vocab import ItemVocab

__all__ = ["RiskScorer"]

_NO_ITEMS = ItemVocab(1)  # the risk net reads event types and gaps only


class RiskScorer:
    """Scores contexts with a RiskNet; reasons are the features that raised the risk most.

    `explain_above`: only scores at or above it get reasons (the others an empty tuple).
    Integrated gradients cost several forward passes per row, a third of a lone event's
    prediction; a worker passes its alert threshold, so every alert says why and the events
    that raise none do not pay for it. None explains every row.
    """

    method = "risk-net"

    def __init__(self, net: RiskNet, device: torch.device | None = None,
                 n_reasons: int = 3, ig_steps: int = 8, explain_above: float | None = None
                 ) -> None:
        self.net = net.eval()
        self.device = device or torch.device("cpu")
        self.net.to(self.device)
        self.n_reasons = n_reasons
        self.ig_steps = ig_steps
        self.explain_above = explain_above

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
        x_dev = x.to(self.device, non_blocking=cuda)
        seq_dev = seq.to(self.device, non_blocking=cuda)
        if self.explain_above is None:
            prob, contrib = self.net.attribute(x_dev, seq_dev, steps=self.ig_steps)
            return [RiskOutput(score=p, reasons=r) for p, r in
                    zip(prob.float().cpu().tolist(), self.reasons(x, contrib.float().cpu()),
                        strict=True)]
        with torch.inference_mode():
            prob = self.net(x_dev, seq_dev).float().cpu()
        reasons: list[tuple[Reason, ...]] = [()] * len(contexts)
        rows = torch.nonzero(prob >= self.explain_above).flatten()
        if rows.numel():
            # the same probabilities (one forward pass), attributed for these rows only
            at = rows.to(self.device)
            _, contrib = self.net.attribute(x_dev[at], seq_dev.take(at, seq_dev.items.shape[1]),
                                            steps=self.ig_steps)
            for i, r in zip(rows.tolist(), self.reasons(x[rows], contrib.float().cpu()),
                            strict=True):
                reasons[i] = r
        return [RiskOutput(score=p, reasons=r)
                for p, r in zip(prob.tolist(), reasons, strict=True)]

    def reasons(self, x: torch.Tensor, contrib: torch.Tensor) -> list[tuple[Reason, ...]]:
        """Per row the features with the largest positive contributions, largest first.

        Never empty: a row where no feature raised the risk (a high score carried by the
        sequence encoder or the calibration alone) still names its top-contributing feature,
        so every alert says why.
        """
        names = self.feature_names
        k = min(self.n_reasons, len(names))
        top = torch.topk(contrib, k, dim=1)
        values = x.gather(1, top.indices.to(x.device)).tolist()
        rows: list[tuple[Reason, ...]] = []
        for vals, idx, xs in zip(top.values.tolist(), top.indices.tolist(), values, strict=True):
            row = [Reason(names[j], xv, v) for v, j, xv in zip(vals, idx, xs, strict=True)
                   if v > 0]
            rows.append(tuple(row) if row else (Reason(names[idx[0]], xs[0], vals[0]),))
        return rows

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        torch.save(state, directory / "weights.pt")
        (directory / "config.json").write_text(
            json.dumps({"kind": "risk", "config": self.net.config.to_dict()}), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path, device: torch.device | None = None, *,
             produced: Collection[str] | None = None, explain_above: float | None = None
             ) -> RiskScorer:
        """The scorer saved in `directory`; with `produced` (the feature names the stream
        provides), FeatureMismatch before any weight is read when the net needs others."""
        cfg = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        config = RiskConfig.from_dict(cfg["config"])
        if produced is not None:
            check_features(f"risk {directory.name}", config.feature_names, produced)
        net = RiskNet(config)
        state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        return cls(net, device, explain_above=explain_above)
