"""What the sequential recommenders share: input embeddings, repeat (copy) head, tied output."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from model.encoding import N_GAPS, N_TYPES, SeqBatch


@dataclass(frozen=True)
class SeqRecConfig:
    n_items: int  # rows of the item table, padding and unknown included
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    repeat: bool = True  # copy head: extra score for items already in the user's sequence

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SeqRecNet(nn.Module):
    """Next-item scorer over the whole item table; subclasses implement `encode`.

    Scores are h_t . E[item] + b[item] (output tied to the input item table) plus, with
    `repeat`, a non-negative copy score for every item already in the sequence, weighted by a
    learned attention of the current state over the past events (re-consumption is common in
    e-commerce logs and a plain softmax over the table under-scores it).
    """

    kind = "base"

    def __init__(self, config: SeqRecConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.item_emb = nn.Embedding(config.n_items, d, padding_idx=0)
        self.type_emb = nn.Embedding(N_TYPES, d, padding_idx=0)
        self.gap_emb = nn.Embedding(N_GAPS, d, padding_idx=0)
        self.item_bias = nn.Parameter(torch.zeros(config.n_items))
        self.dropout = nn.Dropout(config.dropout)
        self.copy_q = nn.Linear(d, d)
        self.copy_k = nn.Linear(d, d)
        self.copy_b = nn.Parameter(torch.tensor(-2.0))
        for emb in (self.item_emb, self.type_emb, self.gap_emb):
            nn.init.normal_(emb.weight, std=d ** -0.5)
            with torch.no_grad():
                emb.weight[0].zero_()

    # -- subclasses -----------------------------------------------------------------------
    def encode_from(self, x: torch.Tensor, batch: SeqBatch) -> torch.Tensor:
        """Hidden state per position (B, L, d) from embedded inputs; position t sees 0..t."""
        raise NotImplementedError

    def encode_last_from(self, x: torch.Tensor, batch: SeqBatch) -> torch.Tensor:
        """(B, d) hidden state after the last real event (subclasses may do less work)."""
        h = self.encode_from(x, batch)
        last = (batch.lengths - 1).clamp(min=0)
        return h[torch.arange(h.shape[0], device=h.device), last]

    # -- shared ---------------------------------------------------------------------------
    def embed(self, batch: SeqBatch) -> torch.Tensor:
        x = self.item_emb(batch.items) + self.type_emb(batch.types) + self.gap_emb(batch.gaps)
        out: torch.Tensor = self.dropout(x)
        return out

    def encode(self, batch: SeqBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states (B, L, d), embedded inputs (B, L, d), the copy head's keys)."""
        x = self.embed(batch)
        return self.encode_from(x, batch), x

    def copy_weights(self, h_q: torch.Tensor, keys: torch.Tensor, lengths: torch.Tensor
                     ) -> torch.Tensor:
        """(B, Q, L) non-negative weights of each past event for each query state.

        Keys are the past events' own input embeddings (item, type, gap), so serving can skip
        the top layer's states for all but the last position.
        """
        q = self.copy_q(h_q)
        k = self.copy_k(keys)
        a = torch.nn.functional.softplus(
            q @ k.transpose(1, 2) / math.sqrt(self.config.dim) + self.copy_b)
        pos = torch.arange(keys.shape[1], device=keys.device)
        valid = (pos[None, :] < lengths[:, None]).unsqueeze(1)  # (B, 1, L)
        return a * valid.to(a.dtype)

    def logits_all(self, batch: SeqBatch) -> torch.Tensor:
        """(B, L, n_items) next-item logits at every position (training, tests)."""
        h, x = self.encode(batch)
        logits = h @ self.item_emb.weight.T + self.item_bias
        if self.config.repeat:
            a = self.copy_weights(h, x, batch.lengths)
            causal = torch.ones(h.shape[1], h.shape[1], device=h.device, dtype=torch.bool).tril()
            a = a * causal.to(a.dtype)
            idx = batch.items.unsqueeze(1).expand(-1, h.shape[1], -1)
            logits = logits.scatter_add(2, idx, a.to(logits.dtype))
        return logits

    def logits_last(self, batch: SeqBatch) -> torch.Tensor:
        """(B, n_items) next-item logits after the last real event of each row (serving)."""
        x = self.embed(batch)
        h_last = self.encode_last_from(x, batch)  # (B, d)
        logits = h_last @ self.item_emb.weight.T + self.item_bias
        if self.config.repeat:
            a = self.copy_weights(h_last.unsqueeze(1), x, batch.lengths).squeeze(1)  # (B, L)
            logits = logits.scatter_add(1, batch.items, a.to(logits.dtype))
        return logits

    def forward(self, batch: SeqBatch) -> torch.Tensor:
        return self.logits_last(batch)

    @torch.no_grad()
    def grow_items(self, n_items: int, reset: list[int] | None = None) -> None:
        """Enlarge the item table to n_items rows; old rows keep their values and ids.

        `reset` re-initialises rows whose id the vocabulary recycled for a new item.
        """
        old = self.item_emb.weight
        if n_items > old.shape[0]:
            new = torch.empty((n_items, old.shape[1]), dtype=old.dtype, device=old.device)
            nn.init.normal_(new, std=old.shape[1] ** -0.5)
            new[: old.shape[0]] = old
            emb = nn.Embedding(n_items, old.shape[1], padding_idx=0, device=old.device,
                               dtype=old.dtype)
            emb.weight.copy_(new)
            self.item_emb = emb
            bias = torch.zeros(n_items, dtype=old.dtype, device=old.device)
            bias[: old.shape[0]] = self.item_bias
            self.item_bias = nn.Parameter(bias)
            self.config = SeqRecConfig(**{**self.config.to_dict(), "n_items": n_items})
        for idx in reset or []:
            nn.init.normal_(self.item_emb.weight[idx], std=old.shape[1] ** -0.5)
            self.item_bias[idx] = 0.0
