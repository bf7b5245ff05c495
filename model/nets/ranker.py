"""The hybrid's ranker: a small MLP scoring each candidate from its features, trained listwise."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import nn


@dataclass(frozen=True)
class RankerConfig:
    n_features: int
    hidden: int = 32
    dropout: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RankerNet(nn.Module):
    """Standardised features (B, C, F) -> one score per candidate (B, C).

    The standardisation (mean, std per feature) is measured on the training candidates and
    kept as buffers, so a saved ranker reads raw features as they were at training time.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        self.config = config
        f, h = config.n_features, config.hidden
        self.register_buffer("mean", torch.zeros(f))
        self.register_buffer("std", torch.ones(f))
        self.mlp = nn.Sequential(nn.Linear(f, h), nn.ReLU(), nn.Dropout(config.dropout),
                                 nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 1))

    def set_scale(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        """Mean and std of each feature over the real candidates of x (B, C, F)."""
        rows = x[mask]
        if rows.shape[0] == 0:
            return
        self.mean.copy_(rows.mean(0))
        self.std.copy_(rows.std(0).clamp_min(1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and not torch.is_grad_enabled():
            return self._serve(x)
        z = (x - self.mean) / self.std
        out: torch.Tensor = self.mlp(z).squeeze(-1)
        return out

    def _serve(self, x: torch.Tensor) -> torch.Tensor:
        """The same scores with no autograd and no dropout, at a quarter of the cost: the
        standardisation is folded into the first layer (W / std, b - W (mean / std)), the
        candidates go through as one 2-D matrix and the ReLUs work in place (the (B, C, F)
        path spent most of its time in elementwise passes over the whole block)."""
        first, second, last = (cast(nn.Linear, self.mlp[i]) for i in (0, 3, 5))
        w = first.weight / self.std
        b = first.bias - (w * self.mean).sum(1)
        flat = x.reshape(-1, x.shape[-1])
        h = torch.addmm(b, flat, w.t()).relu_()
        h = torch.addmm(second.bias, h, second.weight.t()).relu_()
        return torch.addmm(last.bias, h, last.weight.t()).reshape(x.shape[:-1])


def listwise_loss(scores: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
                  ) -> torch.Tensor:
    """Softmax cross-entropy of the target's column (B,) over each row's real candidates."""
    logits = scores.masked_fill(~mask, float("-inf"))
    return nn.functional.cross_entropy(logits, target)
