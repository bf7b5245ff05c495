"""GRU4Rec-style recommender: a GRU over past events, scored against the tied item table."""

from __future__ import annotations

import torch
from torch import nn

from model.encoding import SeqBatch
from model.nets.base import SeqRecConfig, SeqRecNet

__all__ = ["GRURec"]


class GRURec(SeqRecNet):
    """A recurrent alternative to SASRec with the same inputs, outputs and copy head."""

    kind = "gru"

    def __init__(self, config: SeqRecConfig) -> None:
        super().__init__(config)
        d = config.dim
        self.gru = nn.GRU(d, d, num_layers=max(1, config.layers // 2), batch_first=True)
        self.norm = nn.LayerNorm(d)

    def encode_from(self, x: torch.Tensor, batch: SeqBatch) -> torch.Tensor:
        # Padding comes after the real events, so a plain (unpacked) GRU never lets it leak
        # into a real position's state; packing would only save compute on the pads.
        h, _ = self.gru(x)
        out: torch.Tensor = self.norm(h)
        return out
