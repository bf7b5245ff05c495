"""The feedback-trained reranker: reorders a recommender's candidate pool by expected reward."""

from __future__ import annotations

import copy
import json
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from model.nets.reranker import N_DENSE_V1, RerankConfig, RerankNet
from model.registry import ModelRegistry
from model.types import EVENT_TYPE_INDEX, RERANK_SEQ_WINDOW, RERANKER, RerankInput

__all__ = ["DENSE_COLUMNS", "RERANKER", "SEQ_WINDOW", "RerankBatch", "RerankInput", "Reranker",
           "featurize"]

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


# The dense block, column by column: (name, width). A net reads the leading
# cfg.dense_features columns (N_DENSE_V1: up to "repeat"), so new columns go at the end.
DENSE_COLUMNS: tuple[tuple[str, int], ...] = (
    ("score", 1),  # base score over the pool's largest |score|
    ("inv_rank", 1),  # 1 / (1 + base rank)
    ("trigger_type", len(EVENT_TYPE_INDEX)),  # one-hot of the trigger's event type
    ("repeat", 1),  # the user had the candidate before the trigger
    ("cat_seen", 1),  # the candidate's category is among the user's recent items'
    ("cat_share", 1),  # the share of the user's recent items in that category
    ("cat_trigger", 1),  # it is the trigger's category
    ("cat_known", 1),  # the candidate's category is known at all
)
_ONEHOT = torch.eye(len(EVENT_TYPE_INDEX))
_FLOAT_COLUMNS = tuple(name for name, _ in DENSE_COLUMNS if name != "trigger_type")


@dataclass(slots=True)
class _Rows:
    """The per-row columns of a batch, one list each; a row is a (decision, candidate) pair.
    Plain lists appended in one loop and turned into tensors once. Named columns cost
    4.2 ms against 4.1 ms for bare local lists (64 decisions x 50 candidates, one thread)."""

    item_hash: list[int] = field(default_factory=list)
    ctx: list[int] = field(default_factory=list)  # the row's decision
    score: list[float] = field(default_factory=list)
    inv_rank: list[float] = field(default_factory=list)
    repeat: list[float] = field(default_factory=list)
    cat_seen: list[float] = field(default_factory=list)
    cat_share: list[float] = field(default_factory=list)
    cat_trigger: list[float] = field(default_factory=list)
    cat_known: list[float] = field(default_factory=list)


@dataclass(slots=True)
class _Contexts:
    """The per-decision columns: trigger type, hashed transition prefixes, recent items."""

    trigger_type: list[int] = field(default_factory=list)
    prefixes: list[list[int]] = field(default_factory=list)
    hist: list[list[int]] = field(default_factory=list)


def _recent_items(seq: Sequence[Sequence[object]], n: int) -> list[bytes]:
    """Up to n distinct items of the sequence, most recent first."""
    recent: list[bytes] = []
    for entry in reversed(seq):
        b = str(entry[0]).encode()
        if b not in recent:
            recent.append(b)
            if len(recent) >= n:
                break
    return recent


def _add_context(out: _Contexts, inp: RerankInput, seq: Sequence[Sequence[object]],
                 cfg: RerankConfig) -> None:
    """Append one decision's trigger type, recent-item hashes and transition prefixes."""
    recent = _recent_items(seq, max(cfg.history, cfg.pair_history))
    out.trigger_type.append(EVENT_TYPE_INDEX.get(str(seq[-1][1]), 0) if seq else 0)
    ib = cfg.item_buckets - 1
    h_row = [1 + zlib.crc32(b) % ib for b in recent[: cfg.history]]
    out.hist.append(h_row + [0] * (cfg.history - len(h_row)))
    pre = [zlib.crc32(b + _SEP) for b in recent[: cfg.pair_history]]
    pre += [-1] * (cfg.pair_history - len(pre))
    # the trigger's category -> candidate: what users browsing a category take
    pre.append(zlib.crc32(_CAT + str(inp.category).encode() + _SEP)
               if inp.category is not None else -1)
    out.prefixes.append(pre)


def _add_rows(out: _Rows, c: int, inp: RerankInput, seq: Sequence[Sequence[object]],
              keep: Sequence[int], cache: dict[str, int]) -> None:
    """Append decision c's kept candidates; ranks and score scale see the whole pool."""
    scores = inp.base_scores
    top = max((abs(s) for s in scores), default=0.0) or 1.0
    rank = [0] * len(scores)
    for r, i in enumerate(sorted(range(len(scores)), key=lambda i: (-scores[i], i))):
        rank[i] = r
    seen = {str(e[0]) for e in seq[:-1]}  # the trigger itself is never a candidate
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
            out.cat_seen.append(0.0)
            out.cat_share.append(0.0)
            out.cat_trigger.append(0.0)
            out.cat_known.append(0.0)
        else:
            sh = share.get(cc, 0.0)
            out.cat_seen.append(1.0 if sh > 0.0 else 0.0)
            out.cat_share.append(sh)
            out.cat_trigger.append(1.0 if cc == trigger_cat else 0.0)
            out.cat_known.append(1.0)
        cand = inp.candidates[j]
        h = cache.get(cand)
        if h is None:
            h = cache[cand] = zlib.crc32(str(cand).encode())
        out.item_hash.append(h)
        out.score.append(scores[j] / top)
        out.inv_rank.append(1.0 / (1 + rank[j]))
        out.repeat.append(1.0 if cand in seen else 0.0)
    out.ctx.extend([c] * len(keep))


def featurize(inputs: Sequence[RerankInput], cfg: RerankConfig,
              rows: Sequence[Sequence[int]] | None = None) -> RerankBatch:
    """Hash every (decision, candidate) pair into the net's inputs (CPU tensors).

    rows: per input, the candidate indices to keep (training needs only the shown ones);
    ranks and score normalisation still see the whole pool.
    """
    out, ctxs, offsets = _Rows(), _Contexts(), [0]
    cache: dict[str, int] = {}
    for c, inp in enumerate(inputs):
        seq = inp.sequence[-SEQ_WINDOW:]
        _add_context(ctxs, inp, seq, cfg)
        _add_rows(out, c, inp, seq, range(len(inp.candidates)) if rows is None else rows[c],
                  cache)
        offsets.append(len(out.item_hash))
    hc = torch.tensor(out.item_hash, dtype=torch.long)
    ctx = torch.tensor(out.ctx, dtype=torch.long)
    hp = torch.tensor(ctxs.prefixes, dtype=torch.long).reshape(len(inputs),
                                                                 cfg.pair_history + 1)[ctx]
    pad = hp < 0
    pairs = ((hp * 1_000_003 + hc[:, None]) % (cfg.pair_buckets - 1) + 1).masked_fill(pad, 0)
    weights = torch.cat([1.0 / torch.arange(1, cfg.pair_history + 1, dtype=torch.float32),
                         torch.ones(1)])
    pair_w = weights.expand(len(out.item_hash), -1).masked_fill(pad, 0.0)
    return RerankBatch(dense=_dense(out, ctxs, ctx, cfg.dense_features),
                       items=hc % (cfg.item_buckets - 1) + 1, pairs=pairs, pair_w=pair_w,
                       hist=torch.tensor(ctxs.hist, dtype=torch.long).reshape(len(inputs),
                                                                              cfg.history),
                       hist_rows=ctx, offsets=offsets)


def _dense(out: _Rows, ctxs: _Contexts, ctx: torch.Tensor, width: int) -> torch.Tensor:
    """The leading `width` DENSE_COLUMNS, built by name."""
    n_rows = len(out.ctx)
    floats = torch.tensor([getattr(out, name) for name in _FLOAT_COLUMNS],
                          dtype=torch.float32).reshape(len(_FLOAT_COLUMNS), n_rows).T
    onehot = _ONEHOT[torch.tensor(ctxs.trigger_type, dtype=torch.long)][ctx]
    blocks = [onehot if name == "trigger_type" else floats[:, _FLOAT_COLUMNS.index(name), None]
              for name, _ in DENSE_COLUMNS]
    return torch.cat(blocks, 1)[:, :width]


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
