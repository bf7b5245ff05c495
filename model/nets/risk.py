"""Risk net: rolling feature vector + small event-sequence encoder -> calibrated probability."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from model.encoding import N_GAPS, N_TYPES, SeqBatch, signed_log1p
from model.types import FEATURE_NAMES

__all__ = ["RiskConfig", "RiskNet"]


@dataclass(frozen=True)
class RiskConfig:
    feature_names: tuple[str, ...] = FEATURE_NAMES
    dim: int = 32
    seq_dim: int = 16
    max_len: int = 50
    dropout: float = 0.1
    use_sequence: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["feature_names"] = list(self.feature_names)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RiskConfig:
        return cls(**{**d, "feature_names": tuple(d.get("feature_names", FEATURE_NAMES))})


class RiskNet(nn.Module):
    """logit = w . z + MLP([z, seq]) where z are standardised signed-log features.

    The linear path keeps attributions readable; the MLP and the sequence encoder (event types
    and time gaps, no item ids) catch interactions. Calibration is Platt scaling fitted on a
    validation split plus an optional prior shift for a different serving base rate, stored as
    buffers so they travel with the weights.
    """

    kind = "risk"
    mean: torch.Tensor
    std: torch.Tensor
    calib: torch.Tensor

    def __init__(self, config: RiskConfig | None = None) -> None:
        super().__init__()
        self.config = config or RiskConfig()
        f = len(self.config.feature_names)
        d = self.config.dim
        self.register_buffer("mean", torch.zeros(f))
        self.register_buffer("std", torch.ones(f))
        self.register_buffer("calib", torch.tensor([1.0, 0.0, 0.0]))  # scale, bias, prior shift
        self.linear = nn.Linear(f, 1)
        sd = self.config.seq_dim
        self.type_emb = nn.Embedding(N_TYPES, sd, padding_idx=0)
        self.gap_emb = nn.Embedding(N_GAPS, sd, padding_idx=0)
        self.seq_rnn = nn.GRU(sd, sd, batch_first=True)
        in_dim = f + (sd if self.config.use_sequence else 0)
        self.mlp = nn.Sequential(nn.Linear(in_dim, d), nn.GELU(), nn.Dropout(self.config.dropout),
                                 nn.Linear(d, 1))

    def fit_scaler(self, x_raw: torch.Tensor) -> None:
        z = signed_log1p(x_raw)
        with torch.no_grad():
            self.mean.copy_(z.mean(0))
            self.std.copy_(z.std(0).clamp(min=1e-3))

    def standardise(self, x_raw: torch.Tensor) -> torch.Tensor:
        return (signed_log1p(x_raw) - self.mean) / self.std

    def seq_state(self, seq: SeqBatch) -> torch.Tensor:
        h, _ = self.seq_rnn(self.type_emb(seq.types) + self.gap_emb(seq.gaps))
        last = (seq.lengths - 1).clamp(min=0)
        out: torch.Tensor = h[torch.arange(h.shape[0], device=h.device), last]
        return out

    def raw_logit(self, z: torch.Tensor, seq: SeqBatch | None,
                  seq_h: torch.Tensor | None = None) -> torch.Tensor:
        parts = [z]
        if self.config.use_sequence:
            if seq_h is None:
                seq_h = self._seq_or_zeros(z, seq)
            parts.append(seq_h.to(z.dtype))
        out: torch.Tensor = (self.linear(z) + self.mlp(torch.cat(parts, 1))).squeeze(1)
        return out

    def _seq_or_zeros(self, z: torch.Tensor, seq: SeqBatch | None) -> torch.Tensor:
        if seq is None:
            return torch.zeros(z.shape[0], self.config.seq_dim, device=z.device, dtype=z.dtype)
        return self.seq_state(seq)

    def calibrated_logit(self, z: torch.Tensor, seq: SeqBatch | None,
                         seq_h: torch.Tensor | None = None) -> torch.Tensor:
        c = self.calib
        return self.raw_logit(z, seq, seq_h) * c[0] + c[1] + c[2]

    def forward(self, x_raw: torch.Tensor, seq: SeqBatch | None = None) -> torch.Tensor:
        """Calibrated probability per row."""
        return torch.sigmoid(self.calibrated_logit(self.standardise(x_raw), seq))

    def set_calibration(self, scale: float, bias: float, prior_shift: float = 0.0) -> None:
        with torch.no_grad():
            self.calib.copy_(torch.tensor([scale, bias, prior_shift]))

    def attribute(self, x_raw: torch.Tensor, seq: SeqBatch | None = None,
                  steps: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities, contributions per feature in calibrated log-odds).

        Integrated gradients from the training mean (z = 0) to the input, in a few steps:
        contributions sum to about logit(x) - logit(mean), so each says how much that feature
        moved this event's risk away from a typical event's.
        """
        with torch.inference_mode(False), torch.enable_grad():
            z = self.standardise(x_raw.clone()).detach()
            seq_h = None
            if self.config.use_sequence:
                seq_c = None if seq is None else SeqBatch(
                    seq.items.clone(), seq.types.clone(), seq.gaps.clone(), seq.lengths.clone())
                with torch.no_grad():
                    seq_h = self._seq_or_zeros(z, seq_c)
            # all steps in one batched pass: (steps * B) rows, one backward (a loop of small
            # autograd calls cost several ms per batch in dispatch overhead alone)
            b = z.shape[0]
            alphas = torch.linspace(1.0 / steps, 1.0, steps, device=z.device, dtype=z.dtype)
            zi = (alphas[:, None, None] * z[None]).reshape(steps * b, -1).requires_grad_(True)
            hi = None if seq_h is None else seq_h.repeat(steps, 1)
            (g,) = torch.autograd.grad(self.calibrated_logit(zi, None, hi).sum(), zi)
            grads = g.reshape(steps, b, -1).sum(0)
            contrib = z * grads / steps
            with torch.no_grad():
                prob = torch.sigmoid(self.calibrated_logit(z, None, seq_h))
        return prob.detach(), contrib.detach()
