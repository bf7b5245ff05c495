"""Candidate generation per event, batched in tensors: the user's recent items, co-visitation
neighbours of them, popular items of their categories and overall, each with count features."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from model.recommenders.counts import TYPE_WEIGHT, ItemCounts
from model.types import EVENT_TYPE_INDEX, EVENT_TYPES, SeqItem


@dataclass(frozen=True)
class CandidateConfig:
    """How many candidates each source gives (a few hundred at most, before de-duplication)."""

    history: int = 50  # the user's last events read (their items are candidates)
    anchors: int = 5  # last distinct items whose co-visitation neighbours are candidates
    neighbours: int = 40  # per anchor
    categories: int = 3  # last distinct categories of the user
    per_category: int = 10  # most popular items of each
    popular: int = 20  # most popular items overall (the fallback)

    @property
    def total(self) -> int:
        """The most candidates one event can get from these sources."""
        return (self.history + self.anchors * self.neighbours
                + self.categories * self.per_category + self.popular)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Features of a candidate from counts alone (the ranker's inputs besides the sequence model's).
COUNT_FEATURES: tuple[str, ...] = (
    "hist_count", "hist_weight", "covis_sum", "covis_last", "category_source",
    "popular_source", "hist_recency", "hist_time_recency", "covis_max", "in_history",
    "popularity", "trend", "item_repeat", "category_match", "category_share",
    *(f"trigger_{t}" for t in EVENT_TYPES), "history_length", "candidates")
_SUMMED = 6  # the first six are summed over a candidate's entries, the next five maxed
_MAXED = 5  # the last of them the rank among the `extra` ids (not a count feature)


class Encoded(NamedTuple):
    """A batch of histories as index ids (0: padding; above n: items unknown to the counts,
    numbered per batch), newest first."""

    ids: torch.Tensor  # (B, L)
    ages: torch.Tensor  # (B, L) float events back from the trigger (0), padding: inf
    minutes: torch.Tensor  # (B, L) float minutes before the trigger
    types: torch.Tensor  # (B, L) float type weights (0 for padding)
    anchors: torch.Tensor  # (B, A) last distinct items, newest first (0: none)
    cats: torch.Tensor  # (B, Kc) last distinct category ids (0: none)
    trigger_type: torch.Tensor  # (B,) int64 event type index
    excluded: torch.Tensor  # (B, E) ids never to recommend (0: none)
    names: list[str]  # names of the batch-local ids n + 1, n + 2, ...


class Candidates(NamedTuple):
    ids: torch.Tensor  # (B, C) index ids (0 where `mask` is False)
    mask: torch.Tensor  # (B, C) bool, a real candidate
    features: torch.Tensor  # (B, C, len(COUNT_FEATURES))
    extra_rank: torch.Tensor  # (B, C) 1 / (1 + rank) among `extra` ids, 0 for the others


class CandidateTables:
    """The counts as tensors (see `from_counts`), and the generator that reads them."""

    def __init__(self, cfg: CandidateConfig, items: list[str], cat_names: list[str],
                 tensors: dict[str, torch.Tensor]) -> None:
        self.cfg = cfg
        self.items = items
        self.n = len(items)
        self.index = {item: i + 1 for i, item in enumerate(items)}
        self.cat_index = {c: i + 1 for i, c in enumerate(cat_names)}
        self.tensors = tensors
        self.popularity = tensors["popularity"]  # (n + 1,) log share of the events
        self.trend = tensors["trend"]  # (n + 1,) log ratio of recent to overall share
        self.repeat = tensors["repeat"]  # (n + 1,) log events per distinct user
        self.category = tensors["category"]  # (n + 1,) category id, 0: none
        self._category_list: list[int] = self.category.tolist()
        self.nbr_ids = tensors["nbr_ids"]  # (n + 1, neighbours) co-visitation neighbours
        self.nbr_w = tensors["nbr_w"]  # their similarities
        self.cat_top = tensors["cat_top"]  # (categories + 1, per_category) popular items
        self.pop_top = torch.arange(1, min(self.n, cfg.popular) + 1, dtype=torch.int64)

    @classmethod
    def from_counts(cls, counts: ItemCounts, cfg: CandidateConfig = CandidateConfig()
                    ) -> CandidateTables:
        items = counts.items
        index = {item: i + 1 for i, item in enumerate(items)}
        count = torch.tensor([0.0, *counts.count])
        recent = torch.tensor([0.0, *counts.recent])
        popularity = torch.log((count + 0.5) / max(1.0, counts.total))
        trend = torch.log((recent + 0.5) / max(1.0, counts.total_recent)) - popularity
        repeat = torch.log(count.clamp_min(1.0) / torch.tensor([1.0, *counts.users]))
        cats = sorted({c for c in counts.category if c is not None})
        cat_index = {c: i + 1 for i, c in enumerate(cats)}
        category = torch.tensor([0, *(0 if c is None else cat_index[c] for c in counts.category)],
                                dtype=torch.int64)
        k = cfg.neighbours
        nbr_ids = torch.zeros((len(items) + 1, k), dtype=torch.int64)
        nbr_w = torch.zeros((len(items) + 1, k))
        for a, row in counts.neighbours.items():
            kept = [(index[b], w) for b, w in row if b in index][:k]
            if a in index and kept:
                nbr_ids[index[a], :len(kept)] = torch.tensor([b for b, _ in kept])
                nbr_w[index[a], :len(kept)] = torch.tensor([w for _, w in kept])
        tensors = {"popularity": popularity, "trend": trend, "repeat": repeat, "category": category,
                   "nbr_ids": nbr_ids, "nbr_w": nbr_w,
                   "cat_top": _category_top(popularity, category, len(cats), cfg.per_category)}
        return cls(cfg, items, cats, tensors)

    def save(self, path: Path) -> None:
        """Ids as int32 on disk (half the bytes of the neighbour table)."""
        small = {k: v.to(torch.int32) if v.dtype == torch.int64 else v
                 for k, v in self.tensors.items()}
        torch.save({"config": self.cfg.to_dict(), "items": self.items,
                    "categories": list(self.cat_index), "tensors": small}, path)

    @classmethod
    def load(cls, path: Path) -> CandidateTables:
        d = torch.load(path, map_location="cpu", weights_only=True)
        tensors = {k: v.to(torch.int64) if v.dtype == torch.int32 else v
                   for k, v in d["tensors"].items()}
        return cls(CandidateConfig(**d["config"]), list(d["items"]), list(d["categories"]),
                   tensors)

    def encode(self, seqs: Sequence[Sequence[SeqItem]], exclude: Sequence[Collection[str]],
               categories: Sequence[str | None] | None = None) -> Encoded:
        """Item strings to ids (the only per-event Python: one dict lookup each), the rest in
        whole-batch tensor ops. `categories` may give each trigger's category where the
        counts do not know it."""
        cfg, n, index = self.cfg, self.n, self.index
        b = len(seqs)
        width = max(1, min(cfg.history, max((len(s) for s in seqs), default=1)))
        tails = [s[: -width - 1: -1] if len(s) > width else s[::-1] for s in seqs]  # newest first
        flat = [e for t in tails for e in t]
        local: dict[str, int] = {}
        get = index.get
        ids_flat = [get(e[0]) or local.setdefault(e[0], n + 1 + len(local)) for e in flat]
        lens = torch.tensor([len(t) for t in tails], dtype=torch.int64)
        real = torch.arange(width)[None, :] < lens[:, None]
        ids = torch.zeros((b, width), dtype=torch.int64)
        ids[real] = torch.tensor(ids_flat, dtype=torch.int64)
        ts = torch.zeros((b, width), dtype=torch.int64)
        ts[real] = torch.tensor([e[2] for e in flat], dtype=torch.int64)
        types = torch.zeros((b, width))
        types[real] = torch.tensor([TYPE_WEIGHT.get(e[1], 1.0) for e in flat])
        ages = torch.where(real, torch.arange(width, dtype=torch.float32)[None, :], math.inf)
        minutes = torch.where(real, (ts[:, :1] - ts).clamp(min=0) / 60_000.0, 0.0)
        cat = self.category[ids * (ids <= n)]
        if categories is not None:  # the trigger's own category, where the counts lack it
            given = [self.cat_index.get(str(c), 0) if c is not None else 0 for c in categories]
            cat[:, 0] = torch.where(cat[:, 0] > 0, cat[:, 0], torch.tensor(given))
        trig = torch.tensor([EVENT_TYPE_INDEX.get(t[0][1], 0) if t else 0 for t in tails],
                            dtype=torch.int64)
        excl = [[index.get(x) or local.get(x, 0) for x in ex] or [0] for ex in exclude]
        width_e = max((len(x) for x in excl), default=1)
        excluded = torch.tensor([x + [0] * (width_e - len(x)) for x in excl], dtype=torch.int64)
        return Encoded(ids, ages, minutes, types, _first_distinct(ids, cfg.anchors),
                       _first_distinct(cat, cfg.categories), trig, excluded.reshape(b, -1),
                       list(local))

    def name(self, i: int, enc: Encoded) -> str:
        return self.items[i - 1] if i <= self.n else enc.names[i - self.n - 1]

    def generate(self, enc: Encoded, extra: torch.Tensor | None = None) -> Candidates:
        """De-duplicated candidates of every source (plus `extra` (B, S) ids, e.g. a sequence
        model's top items), each with COUNT_FEATURES; excluded items are masked out."""
        b = enc.ids.shape[0]
        f_all = _SUMMED + _MAXED
        rec = 1.0 / (1.0 + enc.ages)
        hist = torch.zeros((*enc.ids.shape, f_all))
        hist[..., 0] = (enc.ids > 0).float()
        hist[..., 1] = enc.types * rec.sqrt()
        hist[..., 6] = rec
        hist[..., 7] = torch.where(enc.ids > 0, 1.0 / (1.0 + torch.log1p(enc.minutes)), 0.0)
        hist[..., 9] = hist[..., 0]
        safe_anchor = enc.anchors.clamp(max=self.n) * (enc.anchors <= self.n)
        nb_ids = self.nbr_ids[safe_anchor]  # (B, A, K)
        nb_w = self.nbr_w[safe_anchor] / (1.0 + torch.arange(enc.anchors.shape[1]))[None, :, None]
        cov = torch.zeros((*nb_ids.shape, f_all))
        cov[..., 2] = nb_w
        cov[:, 0, :, 3] = nb_w[:, 0]
        cov[..., 8] = nb_w
        cat_ids = self.cat_top[enc.cats]  # (B, Kc, per)
        cat = torch.zeros((*cat_ids.shape, f_all))
        per = cat_ids.shape[2]
        cat[..., 4] = torch.where(cat_ids > 0, 1.0 / (1.0 + torch.arange(per)), 0.0)
        pop_ids = self.pop_top.expand(b, -1)
        pop = torch.zeros((*pop_ids.shape, f_all))
        pop[..., 5] = 1.0 / (1.0 + torch.arange(pop_ids.shape[1]))
        parts_ids = [enc.ids, nb_ids.reshape(b, -1), cat_ids.reshape(b, -1), pop_ids]
        parts_f = [hist, cov.reshape(b, -1, f_all), cat.reshape(b, -1, f_all), pop]
        if extra is not None:
            parts_ids.append(extra)
            ext = torch.zeros((*extra.shape, f_all))
            ext[..., f_all - 1] = 1.0 / (1.0 + torch.arange(extra.shape[1]))
            parts_f.append(ext)
        ids, feats = _dedupe(torch.cat(parts_ids, 1), torch.cat(parts_f, 1))
        mask = (ids > 0) & ~(ids[:, :, None] == enc.excluded[:, None, :]).any(2)
        ids = ids * mask
        return Candidates(ids, mask, self._dense(enc, ids, mask, feats),
                          feats[..., f_all - 1] * mask)

    def _dense(self, enc: Encoded, ids: torch.Tensor, mask: torch.Tensor, summed: torch.Tensor
               ) -> torch.Tensor:
        """COUNT_FEATURES from the de-duplicated source features plus per-item lookups."""
        b, c = ids.shape
        safe = ids * (ids <= self.n)
        cat = self.category[safe]
        hist_cat = self.category[enc.ids * (enc.ids <= self.n)]  # (B, L)
        trig_cat = hist_cat[:, 0]
        n_hist = (enc.ids > 0).sum(1).clamp(min=1)
        # history events in the candidate's category: two binary searches in the sorted row
        hc = hist_cat.sort(1).values.contiguous()
        same = ((torch.searchsorted(hc, cat, right=True) - torch.searchsorted(hc, cat))
                * (cat > 0))
        dense = [torch.log1p(summed[..., 0]), summed[..., 1], summed[..., 2], summed[..., 3],
                 summed[..., 4], summed[..., 5], summed[..., 6], summed[..., 7], summed[..., 8],
                 summed[..., 9], self.popularity[safe], self.trend[safe], self.repeat[safe],
                 ((cat == trig_cat[:, None]) & (cat > 0)).float(), same / n_hist[:, None]]
        onehot = torch.nn.functional.one_hot(enc.trigger_type, len(EVENT_TYPES)).float()
        per_row = [*onehot.unbind(1), torch.log1p(n_hist.float()),
                   torch.log1p(mask.sum(1).float())]
        dense.extend(v[:, None].expand(b, c) for v in per_row)
        return torch.stack(dense, 2) * mask[..., None]


def _first_distinct(x: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) the first k distinct non-zero values of each row of x (B, L), in row order
    (0 pads)."""
    n = x.shape[1]
    earlier = torch.ones((n, n), dtype=torch.bool).tril(-1)  # [i, j]: j comes before i
    dup = ((x[:, :, None] == x[:, None, :]) & earlier).any(2)
    keep = (x > 0) & ~dup
    rank = keep.cumsum(1) - 1
    take = keep & (rank < k)
    out = torch.zeros((x.shape[0], k + 1), dtype=x.dtype)
    out.scatter_(1, torch.where(take, rank, k), x * take)  # others land in a dropped column
    return out[:, :k]


def _category_top(popularity: torch.Tensor, category: torch.Tensor, n_cats: int, k: int
                  ) -> torch.Tensor:
    """(n_cats + 1, k) the k most popular items of each category (0 pads)."""
    top = torch.zeros((n_cats + 1, k), dtype=torch.int64)
    fill = [0] * (n_cats + 1)
    order = torch.argsort(popularity[1:], descending=True, stable=True) + 1
    for i, c in zip(order.tolist(), category[order].tolist(), strict=True):
        if c and fill[c] < k:
            top[c, fill[c]] = i
            fill[c] += 1
    return top


def _dedupe(ids: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One entry per distinct id and row: the first _SUMMED features summed over the id's
    entries, the next _MAXED maxed. Returns (B, C) ids (0 pads) and (B, C, F) features."""
    b, r, f = feats.shape
    sorted_ids, order = ids.sort(1)
    feats = feats.gather(1, order[:, :, None].expand(b, r, f))
    new = torch.ones_like(sorted_ids, dtype=torch.bool)
    new[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    seg = new.cumsum(1) - 1
    c = int(seg[:, -1].max()) + 1 if r else 1
    out_ids = torch.zeros((b, c), dtype=torch.int64).scatter_(1, seg, sorted_ids)
    idx = seg[:, :, None]
    summed = torch.zeros((b, c, _SUMMED)).scatter_add_(
        1, idx.expand(b, r, _SUMMED), feats[..., :_SUMMED])
    maxed = torch.zeros((b, c, f - _SUMMED)).scatter_reduce_(
        1, idx.expand(b, r, f - _SUMMED), feats[..., _SUMMED:], "amax", include_self=True)
    return out_ids, torch.cat([summed, maxed], 2)
