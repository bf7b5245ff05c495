"""The feedback-trained reranker: reorders a recommender's candidate pool by expected reward."""

from __future__ import annotations

import copy
import json
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from model.nets.reranker import N_DENSE_V1, RerankConfig, RerankNet
from model.registry import ModelRegistry
from model.types import EVENT_TYPE_INDEX, RERANK_SEQ_WINDOW, RERANKER, RerankInput

__all__ = ["RERANKER", "SEQ_WINDOW", "RerankInput", "Reranker", "featurize"]

# Sequence entries (the trigger last) that the features read: the decision log keeps more, the
# trainer keeps exactly these, so serving and training see the same window.
SEQ_WINDOW = RERANK_SEQ_WINDOW

_SEP = b"\x1f"
_CAT = b"\x1ecat:"


@dataclass(slots=True)
class RerankBatch:
    dense: torch.Tensor
    items: torch.Tensor
    pairs: torch.Tensor
    pair_w: torch.Tensor
    hist: torch.Tensor
    hist_rows: torch.Tensor
    offsets: list[int]  # row offset of each input; offsets[-1] == number of rows

    def to(self, device: torch.device) -> RerankBatch:
        return RerankBatch(self.dense.to(device), self.items.to(device),
                           self.pairs.to(device), self.pair_w.to(device),
                           self.hist.to(device), self.hist_rows.to(device), self.offsets)


_ONEHOT = torch.eye(4)


def featurize(inputs: Sequence[RerankInput], cfg: RerankConfig,
              rows: Sequence[Sequence[int]] | None = None) -> RerankBatch:
    """Hash every (decision, candidate) pair into the net's inputs (CPU tensors).

    rows: per input, the candidate indices to keep (training needs only the shown ones);
    ranks and score normalisation still see the whole pool.
    """
    item_h: list[int] = []
    score_n: list[float] = []
    inv_rank: list[float] = []
    repeat: list[float] = []
    row_ctx: list[int] = []
    trig: list[int] = []
    prefixes: list[list[int]] = []
    hist: list[list[int]] = []
    offsets = [0]
    cache: dict[str, int] = {}
    n_recent = max(cfg.history, cfg.pair_history)
    ib = cfg.item_buckets - 1
    cat_seen: list[float] = []
    cat_share: list[float] = []
    cat_trigger: list[float] = []
    cat_known: list[float] = []
    for c, inp in enumerate(inputs):
        seq = inp.sequence[-SEQ_WINDOW:]
        recent: list[bytes] = []  # distinct recent items, most recent first
        for entry in reversed(seq):
            b = str(entry[0]).encode()
            if b not in recent:
                recent.append(b)
                if len(recent) >= n_recent:
                    break
        trig.append(EVENT_TYPE_INDEX.get(str(seq[-1][1]), 0) if seq else 0)
        h_row = [1 + zlib.crc32(b) % ib for b in recent[: cfg.history]]
        hist.append(h_row + [0] * (cfg.history - len(h_row)))
        pre = [zlib.crc32(b + _SEP) for b in recent[: cfg.pair_history]]
        pre += [-1] * (cfg.pair_history - len(pre))
        # the trigger's category -> candidate: what users browsing a category take
        pre.append(zlib.crc32(_CAT + str(inp.category).encode() + _SEP)
                   if inp.category is not None else -1)
        prefixes.append(pre)
        scores = inp.base_scores
        top = max((abs(s) for s in scores), default=0.0) or 1.0
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        rank = [0] * len(scores)
        for r, i in enumerate(order):
            rank[i] = r
        seen = {str(e[0]) for e in seq[:-1]}  # the trigger itself is never a candidate
        keep = range(len(inp.candidates)) if rows is None else rows[c]
        cand_cats = inp.candidate_categories
        if len(cand_cats) != len(inp.candidates):
            cand_cats = ()
        known = [x for x in inp.recent_categories[-SEQ_WINDOW:] if x is not None]
        share = {x: n / len(known) for x, n in Counter(known).items()}
        trigger_cat = inp.category if inp.category is not None else (
            inp.recent_categories[-1] if inp.recent_categories else None)
        for j in keep:
            cc = cand_cats[j] if cand_cats else None
            if cc is None:
                cat_seen.append(0.0)
                cat_share.append(0.0)
                cat_trigger.append(0.0)
                cat_known.append(0.0)
            else:
                sh = share.get(cc, 0.0)
                cat_seen.append(1.0 if sh > 0.0 else 0.0)
                cat_share.append(sh)
                cat_trigger.append(1.0 if cc == trigger_cat else 0.0)
                cat_known.append(1.0)
            cand = inp.candidates[j]
            h = cache.get(cand)
            if h is None:
                h = cache[cand] = zlib.crc32(str(cand).encode())
            item_h.append(h)
            score_n.append(scores[j] / top)
            inv_rank.append(1.0 / (1 + rank[j]))
            repeat.append(1.0 if cand in seen else 0.0)
        row_ctx.extend([c] * len(keep))
        offsets.append(len(item_h))
    n_rows = len(item_h)
    hc = torch.tensor(item_h, dtype=torch.long)
    ctx = torch.tensor(row_ctx, dtype=torch.long)
    width = cfg.pair_history + 1
    hp = torch.tensor(prefixes, dtype=torch.long).reshape(len(inputs), width)[ctx]
    pairs = (hp * 1_000_003 + hc[:, None]) % (cfg.pair_buckets - 1) + 1
    pad = hp < 0
    pairs = pairs.masked_fill(pad, 0)
    weights = torch.cat([1.0 / torch.arange(1, cfg.pair_history + 1, dtype=torch.float32),
                         torch.ones(1)])
    pair_w = weights.expand(n_rows, -1).masked_fill(pad, 0.0)
    onehot = _ONEHOT[torch.tensor(trig, dtype=torch.long)][ctx]
    cols = [torch.tensor(score_n, dtype=torch.float32)[:, None],
            torch.tensor(inv_rank, dtype=torch.float32)[:, None], onehot,
            torch.tensor(repeat, dtype=torch.float32)[:, None],
            torch.tensor([cat_seen, cat_share, cat_trigger, cat_known],
                         dtype=torch.float32).reshape(4, n_rows).T]
    dense = torch.cat(cols, 1)[:, :cfg.dense_features]
    return RerankBatch(dense=dense, items=hc % ib + 1, pairs=pairs, pair_w=pair_w,
                       hist=torch.tensor(hist, dtype=torch.long).reshape(len(inputs),
                                                                         cfg.history),
                       hist_rows=ctx, offsets=offsets)


class Reranker:
    """A RerankNet with its version: scores pools, saves to and loads from a registry dir."""

    method = "rerank"

    def __init__(self, net: RerankNet, version: str = "unpublished",
                 device: torch.device | None = None) -> None:
        self.net = net
        self.version = version
        self.device = device or torch.device("cpu")
        self.net.to(self.device)

    @classmethod
    def fresh(cls, config: RerankConfig | None = None, seed: int = 0) -> Reranker:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(RerankNet(config or RerankConfig()))

    @property
    def config(self) -> RerankConfig:
        return self.net.config

    def logits(self, batch: RerankBatch, positions: torch.Tensor | None = None
               ) -> torch.Tensor:
        b = batch.to(self.device)
        pos = positions.to(self.device) if positions is not None else None
        out: torch.Tensor = self.net(b.dense, b.items, b.pairs, b.pair_w, b.hist,
                                     b.hist_rows, pos)
        return out

    def score(self, inputs: Sequence[RerankInput]) -> list[list[float]]:
        """Expected-reward logits of every candidate, per input (same order)."""
        if not inputs:
            return []
        batch = featurize(inputs, self.config)
        was_training = self.net.training
        self.net.eval()
        with torch.inference_mode():
            flat = self.logits(batch).float().cpu().tolist()
        self.net.train(was_training)
        o = batch.offsets
        return [flat[o[i]:o[i + 1]] for i in range(len(inputs))]

    def copy(self, version: str | None = None) -> Reranker:
        return Reranker(copy.deepcopy(self.net), version or self.version, self.device)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), directory / "reranker.pt")
        (directory / "config.json").write_text(json.dumps(self.config.to_dict()), "utf-8")

    @classmethod
    def from_registry(cls, registry: ModelRegistry, version: str | None = None
                      ) -> Reranker | None:
        """The registry's reranker `version` (default: latest), None when none is published."""
        version = version or registry.latest(RERANKER)
        if version is None:
            return None
        return cls.load(registry.path(RERANKER, version), version)

    @classmethod
    def load(cls, directory: Path, version: str = "unpublished",
             device: torch.device | None = None) -> Reranker:
        raw = json.loads((directory / "config.json").read_text("utf-8"))
        raw.setdefault("dense_features", N_DENSE_V1)  # saved before the category features
        cfg = RerankConfig(**raw)
        net = RerankNet(cfg)
        net.load_state_dict(torch.load(directory / "reranker.pt", map_location="cpu",
                                       weights_only=True))
        return cls(net, version, device)
