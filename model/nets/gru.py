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

    # -- streaming: the user's state advances one event at a time ------------------------
    def init_state(self, batch: int = 1) -> torch.Tensor:
        """(layers, B, d) zeros: the state before a user's first event."""
        w = self.item_emb.weight
        return torch.zeros((self.gru.num_layers, batch, self.config.dim), dtype=w.dtype,
                           device=w.device)

    def step(self, state: torch.Tensor, items: torch.Tensor, types: torch.Tensor,
             gaps: torch.Tensor) -> torch.Tensor:
        """The state after one more event per row (items, types, gaps: (B,) ids, type index,
        gap bucket): one GRU step, whatever the length of the history before it."""
        x = self.item_vectors(items) + self.type_emb(types) + self.gap_emb(gaps)
        _, h = self.gru(x[:, None, :], state)
        out: torch.Tensor = h
        return out

    def readout(self, state: torch.Tensor) -> torch.Tensor:
        """(B, d) what the net predicts from: the top layer's normalised hidden state (the
        same vector `encode_last_from` gives after the same events)."""
        out: torch.Tensor = self.norm(state[-1])
        return out

    def encode_state(self, batch: SeqBatch) -> torch.Tensor:
        """(layers, B, d) the state after each row's last real event, in one pass."""
        x = self.embed(batch)
        n = batch.items.shape[1]
        if bool((batch.lengths == n).all()):
            _, h = self.gru(x)
            out: torch.Tensor = h
            return out
        packed = nn.utils.rnn.pack_padded_sequence(x, batch.lengths.cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, h = self.gru(packed)
        out = h
        return out
