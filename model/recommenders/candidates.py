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
_SUMMED = 6  # the first six are summed over a candidate's entries, the next four maxed
_MAXED = 4


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
        torch.save({"config": self.cfg.to_dict(), "items": self.items,
                    "categories": list(self.cat_index), "tensors": self.tensors}, path)

    @classmethod
    def load(cls, path: Path) -> CandidateTables:
        d = torch.load(path, map_location="cpu", weights_only=True)
        return cls(CandidateConfig(**d["config"]), list(d["items"]), list(d["categories"]),
                   dict(d["tensors"]))

    def encode(self, seqs: Sequence[Sequence[SeqItem]], exclude: Sequence[Collection[str]],
               categories: Sequence[str | None] | None = None) -> Encoded:
        """The Python half: item strings to ids, one pass per history (newest first).
        `categories` may give each trigger's category when the counts do not know it."""
        cfg = self.cfg
        index, n, cat_of, cat_index = self.index, self.n, self._category_list, self.cat_index
        local: dict[str, int] = {}
        b = len(seqs)
        width = max(1, min(cfg.history, max((len(s) for s in seqs), default=1)))
        ids = [[0] * width for _ in range(b)]
        ages = [[math.inf] * width for _ in range(b)]
        minutes = [[0.0] * width for _ in range(b)]
        types = [[0.0] * width for _ in range(b)]
        anchors = [[0] * cfg.anchors for _ in range(b)]
        cats = [[0] * cfg.categories for _ in range(b)]
        trig = [0] * b
        for r, seq in enumerate(seqs):
            tail = seq[-width:]
            now = tail[-1].ts_ms if tail else 0
            trig[r] = EVENT_TYPE_INDEX.get(tail[-1].event_type, 0) if tail else 0
            n_anchor = n_cat = 0
            for j, e in enumerate(reversed(tail)):
                i = index.get(e.item_id)
                if i is None:
                    i = local.setdefault(e.item_id, n + 1 + len(local))
                ids[r][j], ages[r][j] = i, float(j)
                minutes[r][j] = max(0, now - e.ts_ms) / 60_000.0
                types[r][j] = TYPE_WEIGHT.get(e.event_type, 1.0)
                if n_anchor < cfg.anchors and i not in anchors[r][:n_anchor]:
                    anchors[r][n_anchor] = i
                    n_anchor += 1
                c = cat_of[i] if i <= n else 0
                if not c and j == 0 and categories is not None and categories[r] is not None:
                    c = cat_index.get(str(categories[r]), 0)
                if c and n_cat < cfg.categories and c not in cats[r][:n_cat]:
                    cats[r][n_cat] = c
                    n_cat += 1
        excl = [[index.get(x) or local.get(x, 0) for x in ex] or [0] for ex in exclude]
        width_e = max(len(x) for x in excl) if excl else 1
        excluded = torch.tensor([x + [0] * (width_e - len(x)) for x in excl], dtype=torch.int64)
        return Encoded(torch.tensor(ids, dtype=torch.int64), torch.tensor(ages),
                       torch.tensor(minutes), torch.tensor(types),
                       torch.tensor(anchors, dtype=torch.int64),
                       torch.tensor(cats, dtype=torch.int64),
                       torch.tensor(trig, dtype=torch.int64), excluded.reshape(b, -1),
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
            parts_f.append(torch.zeros((*extra.shape, f_all)))
        ids, feats = _dedupe(torch.cat(parts_ids, 1), torch.cat(parts_f, 1))
        mask = (ids > 0) & ~(ids[:, :, None] == enc.excluded[:, None, :]).any(2)
        ids = ids * mask
        return Candidates(ids, mask, self._dense(enc, ids, mask, feats))

    def _dense(self, enc: Encoded, ids: torch.Tensor, mask: torch.Tensor, summed: torch.Tensor
               ) -> torch.Tensor:
        """COUNT_FEATURES from the de-duplicated source features plus per-item lookups."""
        b, c = ids.shape
        safe = ids * (ids <= self.n)
        cat = self.category[safe]
        hist_cat = self.category[enc.ids * (enc.ids <= self.n)]  # (B, L)
        trig_cat = hist_cat[:, 0]
        n_hist = (enc.ids > 0).sum(1).clamp(min=1)
        same = ((cat[:, :, None] == hist_cat[:, None, :]) & (hist_cat[:, None, :] > 0)).sum(2)
        dense = [torch.log1p(summed[..., 0]), summed[..., 1], summed[..., 2], summed[..., 3],
                 summed[..., 4], summed[..., 5], summed[..., 6], summed[..., 7], summed[..., 8],
                 summed[..., 9], self.popularity[safe], self.trend[safe], self.repeat[safe],
                 ((cat == trig_cat[:, None]) & (cat > 0)).float(), same / n_hist[:, None]]
        onehot = torch.nn.functional.one_hot(enc.trigger_type, len(EVENT_TYPES)).float()
        per_row = [*onehot.unbind(1), torch.log1p(n_hist.float()),
                   torch.log1p(mask.sum(1).float())]
        dense.extend(v[:, None].expand(b, c) for v in per_row)
        return torch.stack(dense, 2) * mask[..., None]


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
