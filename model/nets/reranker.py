"""RerankNet: expected reward of showing a candidate item, from hashed item/transition features."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["N_DENSE", "N_DENSE_V1", "RerankConfig", "RerankNet"]

# the dense columns, named in model.policy.reranker.DENSE_COLUMNS: base score, rank, trigger
# type one-hot (4), repeat (people come back to items they looked at), then category taste
N_DENSE = 11
N_DENSE_V1 = 7  # rerankers saved before the category features read only the first seven


@dataclass(frozen=True)
class RerankConfig:
    item_buckets: int = 1 << 16  # hashed item ids: bias + embedding
    pair_buckets: int = 1 << 18  # hashed (recent item, candidate) transitions: bias
    dim: int = 16  # taste embeddings: recent items vs candidate
    history: int = 5  # recent items forming the taste vector
    pair_history: int = 3  # recent items whose transitions to the candidate are features
    positions: int = 50  # slate positions with a learned bias (training only)
    dense_features: int = N_DENSE  # leading columns of the dense block this net reads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RerankNet(nn.Module):
    """logit(candidate) = w . dense + b_item + sum_j b_pair(recent_j -> item)
    + b_pair(trigger category -> item) + <u, e_item>.

    A wide (hashed biases, learnable from a handful of rewards per item) and a small deep
    part (a factorised taste term that generalises across items), like a factorisation
    machine. Tables are small enough (~10 MB) for dense gradients, which the CPU runs faster
    than sparse ones at these batch sizes.
    """

    def __init__(self, config: RerankConfig) -> None:
        super().__init__()
        self.config = config
        self.dense = nn.Linear(config.dense_features, 1)
        self.item_bias = nn.Embedding(config.item_buckets, 1)
        # how much more a slot near the top gets engaged with, whatever is shown there: fit
        # in training so it is not credited to the items, left out when ranking
        self.position_bias = nn.Embedding(config.positions, 1)
        nn.init.zeros_(self.position_bias.weight)
        self.pair_bias = nn.Embedding(config.pair_buckets, 1)
        self.cand_emb = nn.Embedding(config.item_buckets, config.dim)
        # bucket 0 is padding: left out of the mean
        self.hist_emb = nn.EmbeddingBag(config.item_buckets, config.dim, mode="mean",
                                        padding_idx=0)
        for table in (self.item_bias.weight, self.pair_bias.weight):
            nn.init.zeros_(table)
        for table in (self.cand_emb.weight, self.hist_emb.weight):
            nn.init.normal_(table, std=0.01)
        with torch.no_grad():  # start as the base ranking: reward grows with the base score
            self.dense.weight.zero_()
            self.dense.weight[0, 0] = 1.0
            self.dense.weight[0, 1] = 1.0
            self.dense.bias.fill_(-3.0)

    def forward(self, dense: torch.Tensor, items: torch.Tensor, pairs: torch.Tensor,
                pair_w: torch.Tensor, hist: torch.Tensor, hist_rows: torch.Tensor,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Logits, one per candidate row.

        dense [R, dense_features]; items [R] hashed candidates; pairs / pair_w [R, P] hashed
        transitions and their weights (0 pads); hist [C, H] hashed recent items per context
        (0 pads); hist_rows [R] the context of each candidate row; positions [R] the slot each
        row was shown in (training only).
        """
        logit = self.dense(dense).squeeze(-1) + self.item_bias(items).squeeze(-1)
        logit = logit + (self.pair_bias(pairs).squeeze(-1) * pair_w).sum(-1)
        taste = self.hist_emb(hist)  # [C, dim]
        out: torch.Tensor = logit + (self.cand_emb(items) * taste[hist_rows]).sum(-1)
        if positions is not None:
            out = out + self.position_bias(
                positions.clamp(max=self.config.positions - 1)).squeeze(-1)
        return out
