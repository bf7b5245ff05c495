"""Candidate generation per event, batched in tensors: the user's recent items, co-visitation
neighbours of them, popular items of their categories and overall, each with count features."""

from __future__ import annotations

import math
from array import array
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
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
# padding of a history row: no item, weight 0 (an unknown type weighs 1.0)
_PAD_ITEM = "\x00pad"
_PAD = SeqItem(_PAD_ITEM, "", 0)
_WEIGHT: defaultdict[str, float] = defaultdict(lambda: 1.0, {**TYPE_WEIGHT, "": 0.0})


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
        # each row newest first, padded to `width` with a padding event (id 0, weight 0)
        pad = [_PAD] * width
        rows = [(s[: -width - 1: -1] if len(s) > width else s[::-1]) for s in seqs]
        flat = [e for t in rows for e in (*t, *pad[: width - len(t)])]
        items, etypes, stamps = zip(*flat, strict=True) if flat else ((), (), ())
        local: dict[str, int] = {}
        get = index.get
        ids = _packed("q", [get(x) or (0 if x is _PAD_ITEM else
                                       local.setdefault(x, n + 1 + len(local))) for x in items]
                      ).view(b, width)
        lens = torch.tensor([len(t) for t in rows], dtype=torch.int64)
        # an item unknown to the counts is still a real event: real by position, not by id
        real = torch.arange(width)[None, :] < lens[:, None]
        ts = _packed("q", stamps).view(b, width)
        types = _packed("f", map(_WEIGHT.__getitem__, etypes)).view(b, width)
        ages = torch.where(real, torch.arange(width, dtype=torch.float32)[None, :], math.inf)
        minutes = torch.where(real, (ts[:, :1] - ts).clamp(min=0) / 60_000.0, 0.0)
        cat = self.category[ids * (ids <= n)]
        if categories is not None:  # the trigger's own category, where the counts lack it
            given = [self.cat_index.get(str(c), 0) if c is not None else 0 for c in categories]
            cat[:, 0] = torch.where(cat[:, 0] > 0, cat[:, 0], torch.tensor(given))
        trig = torch.tensor([EVENT_TYPE_INDEX.get(t[0][1], 0) if t else 0 for t in rows],
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
        model's top items), each with COUNT_FEATURES; excluded items are masked out.

        The sources' ids are sorted once per row; each feature is then one scatter of its own
        source's values into the distinct ids (summed, or maxed), never a (B, all entries,
        features) block: at a few hundred candidates a row that block cost more than the rest.
        """
        b, a, k = enc.ids.shape[0], enc.anchors.shape[1], self.nbr_w.shape[1]
        safe_anchor = enc.anchors.clamp(max=self.n) * (enc.anchors <= self.n)
        nb_ids = self.nbr_ids[safe_anchor].reshape(b, -1)  # (B, A * K)
        nb_w = (self.nbr_w[safe_anchor] / (1.0 + torch.arange(a))[None, :, None]).reshape(b, -1)
        cat_ids = self.cat_top[enc.cats]  # (B, Kc, per)
        parts = [enc.ids, nb_ids, cat_ids.reshape(b, -1), self.pop_top.expand(b, -1)]
        if extra is not None:
            parts.append(extra)
        ids, segs = _distinct(parts)
        c = ids.shape[1]
        seg_h, seg_n, seg_c, seg_p = segs[:4]

        def add(seg: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return torch.zeros((b, c)).scatter_add_(1, seg, v)

        def top(seg: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # values are >= 0
            return torch.zeros((b, c)).scatter_reduce_(1, seg, v, "amax", include_self=True)
        real = (enc.ids > 0).float()
        rec = 1.0 / (1.0 + enc.ages)
        per = cat_ids.shape[2]
        cat_rank = torch.where(cat_ids > 0, 1.0 / (1.0 + torch.arange(per)), 0.0)
        hist_count = add(seg_h, real)
        cols = [hist_count, add(seg_h, enc.types * rec.sqrt()), add(seg_n, nb_w),
                add(seg_n[:, :k], nb_w[:, :k]),  # the newest anchor's k neighbours
                add(seg_c, cat_rank.reshape(b, -1)),
                add(seg_p, (1.0 / (1.0 + torch.arange(seg_p.shape[1]))).expand(b, -1)),
                top(seg_h, rec), top(seg_h, real / (1.0 + torch.log1p(enc.minutes))),
                top(seg_n, nb_w), (hist_count > 0).float()]
        extra_rank = (top(segs[4], (1.0 / (1.0 + torch.arange(extra.shape[1]))).expand(b, -1))
                      if extra is not None else torch.zeros((b, c)))
        mask = (ids > 0) & ~(ids[:, :, None] == enc.excluded[:, None, :]).any(2)
        ids = ids * mask
        return Candidates(ids, mask, self._dense(enc, ids, mask, cols), extra_rank * mask)

    def _dense(self, enc: Encoded, ids: torch.Tensor, mask: torch.Tensor,
               cols: list[torch.Tensor]) -> torch.Tensor:
        """COUNT_FEATURES from the de-duplicated source features (the first ten, (B, C)
        each) plus per-item lookups."""
        b, c = ids.shape
        safe = ids * (ids <= self.n)
        cat = self.category[safe]
        hist_cat = self.category[enc.ids * (enc.ids <= self.n)]  # (B, L)
        trig_cat = hist_cat[:, 0]
        n_hist = (enc.ids > 0).sum(1).clamp(min=1)
        dense = [torch.log1p(cols[0]), *cols[1:], self.popularity[safe], self.trend[safe],
                 self.repeat[safe], ((cat == trig_cat[:, None]) & (cat > 0)).float(),
                 _same_category(hist_cat, cat) / n_hist[:, None]]
        onehot = torch.nn.functional.one_hot(enc.trigger_type, len(EVENT_TYPES)).float()
        per_row = [*onehot.unbind(1), torch.log1p(n_hist.float()),
                   torch.log1p(mask.sum(1).float())]
        dense.extend(v[:, None].expand(b, c) for v in per_row)
        return torch.stack(dense, 2) * mask[..., None]


def _distinct(parts: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The distinct ids (B, C) of the parts' ids (B, n_i) together (0 first where present),
    and for each part the column (B, n_i) in them of each of its entries."""
    ids = torch.cat(parts, 1)
    b, r = ids.shape
    sorted_ids, order = ids.sort(1)
    new = torch.ones_like(sorted_ids, dtype=torch.bool)
    new[:, 1:] = sorted_ids[:, 1:] != sorted_ids[:, :-1]
    seg_sorted = new.cumsum(1) - 1
    c = int(seg_sorted[:, -1].max()) + 1 if r else 1
    out = torch.zeros((b, c), dtype=torch.int64).scatter_(1, seg_sorted, sorted_ids)
    seg = torch.empty_like(seg_sorted).scatter_(1, order, seg_sorted)
    sizes = [p.shape[1] for p in parts]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return out, [seg[:, a:a + n] for a, n in zip(starts, sizes, strict=True)]


def _same_category(hist_cat: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
    """(B, C) how many of each row's history events (B, L category ids, 0: none) share the
    candidate's category (B, C): one sort of the (row, category) keys of the whole batch and
    one binary search per candidate."""
    span = int(max(int(hist_cat.max()), int(cat.max()))) + 1
    row = torch.arange(hist_cat.shape[0])[:, None] * span
    keys, counts = torch.unique(row + hist_cat, sorted=True, return_counts=True)
    want = (row + cat).reshape(-1)
    at = torch.searchsorted(keys, want).clamp(max=keys.numel() - 1)
    hit = (keys[at] == want) & (cat.reshape(-1) > 0)
    same: torch.Tensor = (counts[at] * hit).reshape(cat.shape)
    return same


def _packed(code: str, values: Iterable[Any]) -> torch.Tensor:
    """A 1-D int64 ("q") or float32 ("f") tensor of `values`, filled through an array: at
    thousands of values torch.tensor(list) is several times slower (it parses each one)."""
    buf = array(code, values)
    dtype = torch.int64 if code == "q" else torch.float32
    return torch.frombuffer(buf, dtype=dtype) if len(buf) else torch.zeros(0, dtype=dtype)


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
