"""SASRec-style self-attentive sequential recommender: causal Transformer over past events."""

from __future__ import annotations

import torch
from torch import nn

from model.encoding import SeqBatch
from model.nets.base import SeqRecConfig, SeqRecNet


class SASRec(SeqRecNet):
    """Item + event-type + time-gap + position embeddings into a causal Transformer.

    Positions count from the start of the window (counting back from the end would tell
    position t during training how many events follow it). Padding comes after the real
    events and the causal mask keeps it invisible to them, which is why one row scores the
    same alone or inside a batch.
    """

    kind = "sasrec"

    def __init__(self, config: SeqRecConfig) -> None:
        super().__init__(config)
        d = config.dim
        self.pos_emb = nn.Embedding(config.max_len, d)
        nn.init.normal_(self.pos_emb.weight, std=d ** -0.5)
        layer = nn.TransformerEncoderLayer(
            d_model=d, nhead=config.heads, dim_feedforward=d * 2, dropout=config.dropout,
            batch_first=True, norm_first=True, activation="gelu")
        self.transformer = nn.TransformerEncoder(layer, num_layers=config.layers,
                                                 enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self._masks: dict[tuple[int, str], torch.Tensor] = {}

    def _causal(self, n: int, device: torch.device) -> torch.Tensor:
        key = (n, str(device))
        m = self._masks.get(key)
        if m is None:
            m = torch.triu(torch.full((n, n), float("-inf"), device=device), diagonal=1)
            self._masks[key] = m
        return m

    def _with_pos(self, x: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(x.shape[1], device=x.device).clamp(max=self.config.max_len - 1)
        out: torch.Tensor = x + self.pos_emb(pos)[None]
        return out

    def encode_last_from(self, x: torch.Tensor, batch: SeqBatch) -> torch.Tensor:
        """Serving needs only the last position out of the top layer, so that layer attends
        from one query per row instead of L (about 40% less work with two layers)."""
        x = self._with_pos(x)
        layers = list(self.transformer.layers)
        mask = self._causal(x.shape[1], x.device)
        for layer in layers[:-1]:
            x = layer(x, src_mask=mask, is_causal=True)
        top = layers[-1]
        b = x.shape[0]
        last = (batch.lengths - 1).clamp(min=0)
        x_last = x[torch.arange(b, device=x.device), last].unsqueeze(1)  # (B, 1, d)
        kv = top.norm1(x)
        pad = torch.arange(x.shape[1], device=x.device)[None, :] >= batch.lengths[:, None]
        attn, _ = top.self_attn(top.norm1(x_last), kv, kv, key_padding_mask=pad,
                                need_weights=False)
        h = x_last + top.dropout1(attn)
        h = h + top._ff_block(top.norm2(h))
        out: torch.Tensor = self.norm(h.squeeze(1))
        return out

    def encode_from(self, x: torch.Tensor, batch: SeqBatch) -> torch.Tensor:
        x = self._with_pos(x)
        h = self.transformer(x, mask=self._causal(x.shape[1], x.device), is_causal=True)
        out: torch.Tensor = self.norm(h)
        return out
