"""What the sequential recommenders share: input embeddings, repeat (copy) head, tied output."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from model.encoding import N_GAPS, N_TYPES, SeqBatch
from model.errors import ConfigError

__all__ = [
    "SeqRecConfig", "SeqRecNet", "TOPK_GROUP", "TOPK_PRUNE_ROWS", "logsumexp_rows_", "top_k_rows",
]


@dataclass(frozen=True)
class SeqRecConfig:
    n_items: int  # rows of the item table, padding and unknown included
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    repeat: bool = True  # mix in a copy distribution over the user's own past items
    # > 0: an item's vector adds an embedding of its category (`set_categories`), which every
    # item of the category trains: what sparse logs (most items seen once or twice) can learn
    n_categories: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SeqRecNet(nn.Module):
    """Next-item log-probabilities over the item table; subclasses implement `encode_from`.

    With `repeat` (RepeatNet-style), p(item) = g * p_copy(item) + (1 - g) * p_explore(item):
    p_explore is a softmax of h_t . E[item] + b[item] over the table (output tied to the input
    item table); p_copy is an attention of the current state over the user's past events
    (other than the current item), summed per item; the gate g says how likely a
    re-consumption is. Re-consumption is common in e-commerce logs, and a plain softmax over
    tens of thousands of items learns it slowly; the mixture makes it one learned number.
    Without `repeat` the score is the explore log-probability alone.
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
        self.gate = nn.Linear(d, 1)
        # recency of a past event for the copy head: events back from the query (0 = the
        # query's own event); covisitation's repeat score decays with age and wins with it
        self.copy_age = nn.Embedding(config.max_len, 1)
        nn.init.zeros_(self.copy_age.weight)
        self.cat_emb: nn.Embedding | None = None
        self.item_cat: torch.Tensor | None
        if config.n_categories > 0:
            self.cat_emb = nn.Embedding(config.n_categories + 1, d, padding_idx=0)
            nn.init.normal_(self.cat_emb.weight, std=d ** -0.5)
            with torch.no_grad():
                self.cat_emb.weight[0].zero_()
            self.register_buffer("item_cat", torch.zeros(config.n_items, dtype=torch.int64))
        else:
            self.register_buffer("item_cat", None)
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
    def set_categories(self, item_cat: torch.Tensor) -> None:
        """Each item id's category id (0: none), for a net built with n_categories."""
        if self.item_cat is None:
            raise ConfigError("this net was built without categories")
        self.item_cat.copy_(item_cat.to(self.item_cat.device))

    def item_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """The vectors (input and, tied, output) of item ids: the item's own embedding plus
        its category's when the net has categories."""
        v: torch.Tensor = self.item_emb(ids)
        if self.cat_emb is not None and self.item_cat is not None:
            v = v + self.cat_emb(self.item_cat[ids])
        return v

    def item_table(self) -> torch.Tensor:
        """(n_items, d) every item's vector (`item_vectors` of the whole table)."""
        if self.cat_emb is None or self.item_cat is None:
            return self.item_emb.weight
        out: torch.Tensor = self.item_emb.weight + self.cat_emb(self.item_cat)
        return out

    def embed(self, batch: SeqBatch) -> torch.Tensor:
        x = (self.item_vectors(batch.items) + self.type_emb(batch.types)
             + self.gap_emb(batch.gaps))
        out: torch.Tensor = self.dropout(x)
        return out

    def encode(self, batch: SeqBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states (B, L, d), embedded inputs (B, L, d): the copy head's keys)."""
        x = self.embed(batch)
        return self.encode_from(x, batch), x

    def copy_scores(self, h_q: torch.Tensor, keys: torch.Tensor, q_pos: torch.Tensor
                    ) -> torch.Tensor:
        """(N, Q, L) attention scores of query states over past events' own embeddings
        (keys from inputs, so serving can skip the top layer for all but the last event),
        plus a learned bias by age (q_pos (N, Q): each query's position; age = q_pos - l)."""
        q = self.copy_q(h_q)
        if q.shape[1] < keys.shape[1]:
            # serving (one query per row): q . (W key + b) = (q W) . key + q . b projects one
            # query instead of every key
            w = self.copy_k.weight.to(q.dtype)
            out: torch.Tensor = torch.baddbmm((q @ self.copy_k.bias.to(q.dtype))[..., None],
                                              q @ w, keys.to(q.dtype).transpose(1, 2))
        else:
            out = q @ self.copy_k(keys).transpose(1, 2)
        steps = torch.arange(keys.shape[1], device=keys.device)
        age = (q_pos[:, :, None] - steps[None, None, :]).clamp(0, self.config.max_len - 1)
        bias: torch.Tensor = self.copy_age(age).squeeze(-1)
        return out / math.sqrt(self.config.dim) + bias

    def mixture(self, h: torch.Tensor, explore: torch.Tensor, copy: torch.Tensor,
                valid: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """log p over the C columns of `explore`.

        h (N, d) states; explore (N, C) masked logits; copy (N, L) scores over past events,
        valid (N, L) which events may be copied, index (N, L) their column in `explore`.
        """
        log_explore = torch.log_softmax(explore, dim=1)
        if not self.config.repeat:
            return log_explore
        g = self.gate(h).squeeze(-1)
        has = valid.any(1)
        # finite fills and floors throughout: an all -inf row would put NaN in the gradients
        p_pos = torch.softmax(copy.masked_fill(~valid, -1e9), dim=1)
        p_pos = torch.where(has[:, None], p_pos, torch.zeros_like(p_pos))
        p_copy = torch.zeros_like(log_explore).scatter_add(1, index, p_pos.to(log_explore.dtype))
        log_g = torch.where(has, torch.nn.functional.logsigmoid(g), -1e4)
        log_1g = torch.where(has, torch.nn.functional.logsigmoid(-g), 0.0)
        return torch.logaddexp(log_1g[:, None] + log_explore,
                               log_g[:, None] + torch.log(p_copy.clamp_min(1e-30)))

    def _out_logits(self, h: torch.Tensor, n_out: int) -> torch.Tensor:
        if h.dim() == 2:  # serving: one fused pass instead of a product then a bias pass
            bias, table = self.item_bias.to(h.dtype), self.item_table().T.to(h.dtype)
            if (h.device.type == "cpu" and h.dtype == bias.dtype == table.dtype
                    and not torch.is_grad_enabled()):  # out= has no autograd
                # rows laid out a multiple of 16 wide: an odd row length (the items plus
                # padding and unknown) halves the speed of the CPU matrix product
                n = table.shape[1]
                rows = h.new_empty((h.shape[0], -(-n // 16) * 16))
                logits = torch.addmm(bias, h, table, out=rows[:, :n])
            else:
                logits = torch.addmm(bias, h, table)
        else:
            logits = h @ self.item_table().T + self.item_bias
        logits[..., :2] = float("-inf")  # padding and the unknown bucket are never predicted
        if n_out > logits.shape[-1]:  # batch-local ids of unknown history items: copy only
            extra = logits.new_full((*logits.shape[:-1], n_out - logits.shape[-1]),
                                    float("-inf"))
            logits = torch.cat([logits, extra], -1)
        return logits

    def logits_all(self, batch: SeqBatch) -> torch.Tensor:
        """(B, L, n_items) next-item log-probabilities at every position (tests, analysis)."""
        h, x = self.encode(batch)
        b, n, _ = h.shape
        ids = batch.items
        out = self._out_logits(h, self.config.n_items)
        out = out.scatter(2, ids.unsqueeze(2), float("-inf"))  # never the current item
        pos = torch.arange(n, device=h.device)
        copy = self.copy_scores(h, x, pos[None, :].expand(b, n))  # (B, L, L)
        valid = ((pos[None, None, :] <= pos[None, :, None])
                 & (pos[None, None, :] < batch.lengths[:, None, None])
                 & (ids[:, None, :] != ids[:, :, None]))
        flat = self.mixture(h.reshape(b * n, -1), out.reshape(b * n, -1),
                            copy.reshape(b * n, n), valid.reshape(b * n, n),
                            ids[:, None, :].expand(b, n, n).reshape(b * n, n))
        return flat.reshape(b, n, -1)

    def logits_last(self, batch: SeqBatch, copy_ids: torch.Tensor | None = None,
                    n_out: int | None = None) -> torch.Tensor:
        """(B, n_out) next-item log-probabilities after each row's last real event (serving).

        copy_ids (B, L) may give history items unknown to the table batch-local ids >=
        n_items (their rows read the unknown embedding) so they can still be copied.
        """
        x = self.embed(batch)
        h = self.encode_last_from(x, batch)  # (B, d)
        ids = batch.items if copy_ids is None else copy_ids
        total = max(self.config.n_items, n_out or 0)
        b, n = ids.shape
        last = (batch.lengths - 1).clamp(min=0)
        cur = ids[torch.arange(b, device=ids.device), last]
        out = self._out_logits(h, total).scatter(1, cur[:, None], float("-inf"))
        copy = self.copy_scores(h.unsqueeze(1), x, last[:, None]).squeeze(1)  # (B, L)
        pos = torch.arange(n, device=ids.device)
        valid = (pos[None, :] < batch.lengths[:, None]) & (ids != cur[:, None])
        return self.mixture(h, out, copy, valid, ids)

    def topk_last(self, batch: SeqBatch, k: int, copy_ids: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Serving shortcut: (B, k + L) log-probabilities and ids of the only items that can
        make a row's top k: the k best by explore logit plus the row's own history items.

        Same scores as `logits_last` for those items, without the half-dozen passes over the
        whole table that the full mixture needs (they dominate at tens of thousands of items):
        one product, one block-pruned top k, one in-place log-sum-exp.
        Ids may repeat; history ids >= n_items stand for unknown items (copy only).
        """
        x = self.embed(batch)
        h = self.encode_last_from(x, batch)
        ids = batch.items if copy_ids is None else copy_ids
        b, n = ids.shape
        n_items = self.config.n_items
        last = (batch.lengths - 1).clamp(min=0)
        cur = ids[torch.arange(b, device=ids.device), last]
        explore = self._out_logits(h, n_items)
        explore = explore.scatter_(1, cur.clamp(max=n_items - 1)[:, None],
                                  torch.where(cur[:, None] < n_items, float("-inf"),
                                              explore.gather(1, cur.clamp(max=n_items - 1)
                                                             [:, None])))
        top_values, top_ids = top_k_rows(explore, min(k, n_items))
        if not self.config.repeat:
            return top_values - logsumexp_rows_(explore, top_values[:, :1]), top_ids
        hist_explore = torch.where(ids < n_items, explore.gather(1, ids.clamp(max=n_items - 1)),
                                   float("-inf"))
        log_z = logsumexp_rows_(explore, top_values[:, :1])  # explore is spent from here on
        cand = torch.cat([top_ids, ids], 1)  # (B, k + L)
        cand_explore = torch.cat([top_values, hist_explore], 1) - log_z
        pos = torch.arange(n, device=ids.device)
        valid = (pos[None, :] < batch.lengths[:, None]) & (ids != cur[:, None])
        copy = self.copy_scores(h.unsqueeze(1), x, last[:, None]).squeeze(1)
        has = valid.any(1)
        p_pos = torch.softmax(copy.masked_fill(~valid, -1e9), dim=1)
        p_pos = torch.where(has[:, None], p_pos, torch.zeros_like(p_pos))
        same = (cand[:, :, None] == ids[:, None, :]).to(p_pos.dtype)  # (B, k + L, L)
        p_copy = (same @ p_pos.unsqueeze(2)).squeeze(2)
        g = self.gate(h).squeeze(-1)
        log_g = torch.where(has, torch.nn.functional.logsigmoid(g), -1e4)
        log_1g = torch.where(has, torch.nn.functional.logsigmoid(-g), 0.0)
        logp = torch.logaddexp(log_1g[:, None] + cand_explore,
                               log_g[:, None] + torch.log(p_copy.clamp_min(1e-30)))
        # the trigger item is never a candidate
        return logp.masked_fill(cand == cur[:, None], float("-inf")), cand

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
            bias = torch.full((n_items,), -10.0, dtype=old.dtype, device=old.device)
            bias[: old.shape[0]] = self.item_bias
            self.item_bias = nn.Parameter(bias)
            if self.item_cat is not None:  # new items have no category until told
                self.item_cat = torch.cat([self.item_cat, self.item_cat.new_zeros(
                    n_items - self.item_cat.shape[0])])
            self.config = SeqRecConfig(**{**self.config.to_dict(), "n_items": n_items})
        for idx in reset or []:
            nn.init.normal_(self.item_emb.weight[idx], std=old.shape[1] ** -0.5)
            self.item_bias[idx] = -10.0


TOPK_GROUP = 8  # columns per group for the pruned top k (column j in group j % (n // 8))
TOPK_PRUNE_ROWS = 8  # fewer rows: a plain torch.topk is quicker


def top_k_rows(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.topk(x, k, 1)` (values best first, their columns) for wide rows, pruned by
    groups: torch.topk on the CPU costs ~25 us a row at k = 50 whatever the width.

    With g = n // TOPK_GROUP, column j < g * TOPK_GROUP belongs to group j % g (a strided
    view, so the group maxima are one vectorised pass over rows of g columns). A row's k
    highest group maxima are k distinct columns, so its k-th best value is no lower than the
    k-th of them and every column of its best k lies in one of those k groups or in the
    ragged tail: a top k over those k * TOPK_GROUP columns (+ the tail) gives the same values
    in the same order. Ties may resolve to other columns of equal value."""
    b, n = x.shape
    g = n // TOPK_GROUP
    # pruning costs a dozen small ops per call and saves work per row: a loss below a few
    # rows, and when the k best groups are much of the row
    if b < TOPK_PRUNE_ROWS or g < 4 * k:
        top = torch.topk(x, k, 1)
        return top.values, top.indices
    grouped = TOPK_GROUP * g
    best = x[:, :grouped].view(b, TOPK_GROUP, g).amax(1).topk(k, 1, sorted=False).indices
    offsets = torch.arange(0, grouped, g, device=x.device)
    cols = (best[:, None, :] + offsets[None, :, None]).reshape(b, TOPK_GROUP * k)
    if n > grouped:  # the ragged tail is always a candidate
        tail = torch.arange(grouped, n, device=x.device).expand(b, -1)
        cols = torch.cat([cols, tail], 1)
    top = torch.topk(x.gather(1, cols), k, 1)
    return top.values, cols.gather(1, top.indices)


def logsumexp_rows_(x: torch.Tensor, row_max: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1) `torch.logsumexp(x, 1, keepdim=True)`, overwriting a float32 x instead of
    allocating a (B, N) temporary; `row_max` (B, 1), when the caller knows it (a top-1
    value), saves the pass that finds it."""
    if x.dtype != torch.float32:
        x = x.float()  # reduced-precision logits: sum the exponentials in float32
    m = x.amax(1, keepdim=True) if row_max is None else row_max.to(x.dtype)
    m = torch.nan_to_num(m, posinf=0.0, neginf=0.0)  # as torch.logsumexp: no inf - inf
    return x.sub_(m).exp_().sum(1, keepdim=True).log_().add_(m)
