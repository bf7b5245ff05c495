"""SASRec-style self-attentive sequential recommender: causal Transformer over past events."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.encoding import SeqBatch
from model.nets.base import SeqRecConfig, SeqRecNet

__all__ = ["SASRec"]


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
        from one query per row instead of L (about 40% less work with two layers).

        The layers are spelled out with the modules' own weights: the same arithmetic as
        `nn.TransformerEncoderLayer` (pre-norm), without its inference fast path, whose
        packed-QKV transform and masked softmax cost more than the products on a CPU.
        """
        x = self._with_pos(x)
        layers = list(self.transformer.layers)
        for layer in layers[:-1]:
            x = x + layer.dropout1(self._causal_attention(layer, layer.norm1(x)))
            x = x + layer._ff_block(layer.norm2(x))
        top = layers[-1]
        attn = top.self_attn
        b, n, d = x.shape
        heads = attn.num_heads
        rows = torch.arange(b, device=x.device)
        last = (batch.lengths - 1).clamp(min=0)
        y = top.norm1(x)
        kv = F.linear(y, attn.in_proj_weight[d:], attn.in_proj_bias[d:])
        k, v = kv.view(b, n, 2, heads, d // heads).permute(2, 0, 3, 1, 4)
        q = F.linear(y[rows, last], attn.in_proj_weight[:d], attn.in_proj_bias[:d])
        # the last real event sees every real event and no padding (padding comes after it)
        keep = torch.arange(n, device=x.device)[None, :] < batch.lengths[:, None]
        a = F.scaled_dot_product_attention(
            q.view(b, heads, 1, d // heads), k, v, attn_mask=keep[:, None, None, :],
            dropout_p=attn.dropout if self.training else 0.0)
        h = x[rows, last] + top.dropout1(attn.out_proj(a.reshape(b, d)))
        h = h + top._ff_block(top.norm2(h))
        out: torch.Tensor = self.norm(h)
        return out

    def _causal_attention(self, layer: nn.TransformerEncoderLayer, y: torch.Tensor
                          ) -> torch.Tensor:
        """Causal multi-head self-attention of `layer` over y (B, L, d), reading q, k and v
        as strided views of one projection (no per-head copies)."""
        attn = layer.self_attn
        b, n, d = y.shape
        heads = attn.num_heads
        qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                             dropout_p=attn.dropout if self.training else 0.0)
        result: torch.Tensor = attn.out_proj(out.transpose(1, 2).reshape(b, n, d))
        return result

    def encode_from(self, x: torch.Tensor, batch: SeqBatch) -> torch.Tensor:
        x = self._with_pos(x)
        h = self.transformer(x, mask=self._causal(x.shape[1], x.device), is_causal=True)
        out: torch.Tensor = self.norm(h)
        return out
