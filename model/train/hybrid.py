"""Train the hybrid on time slices: the sequence model on the first, the ranker on the next
(next-item targets the sequence model never trained on), tables counted up to the scored part."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import torch

from model.errors import DataError
from model.nets.ranker import RankerConfig, RankerNet, listwise_loss
from model.recommenders.candidates import CandidateConfig, CandidateTables
from model.recommenders.counts import fit_counts
from model.recommenders.hybrid import HybridRecommender
from model.recommenders.sequence import SequenceModel
from model.train.data import Case, cases_between
from model.train.sequence import SeqTrainConfig, train_sequence
from model.types import SeqItem

Users = Mapping[str, Sequence[SeqItem]]


@dataclass(frozen=True)
class HybridConfig:
    ranker_frac: float = 0.2  # events (before the validation slice): the ranker's targets
    valid_frac: float = 0.15  # last events of the training period: picks the served method
    ranker_cases: int = 8000  # next-item cases of the ranker slice used (sampled)
    seq_valid_cases: int = 1000  # cases of the ranker slice that early-stop the sequence model
    hidden: int = 32
    epochs: int = 40
    lr: float = 3e-3
    batch: int = 128
    patience: int = 4
    top_k: int = 50  # the sequence model's top items added to the candidates
    warm_start: bool = True  # the hybrid's ranker starts as the one without the sequence
    half_s: float = 3600.0  # co-visitation time decay (see counts.time_decay)
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Slices(NamedTuple):
    """Start times of the ranker slice and the validation slice inside a training period."""

    t_ranker: int
    t_valid: int
    t_end: int


def time_slices(train: Users, cfg: HybridConfig) -> Slices:
    stamps = sorted(e.ts_ms for s in train.values() for e in s)
    if len(stamps) < 100:
        raise DataError("too few training events for the hybrid's time slices")
    at = len(stamps) - 1
    t_valid = stamps[min(at, int(len(stamps) * (1.0 - cfg.valid_frac)))]
    t_ranker = stamps[min(at, int(len(stamps) * (1.0 - cfg.valid_frac - cfg.ranker_frac)))]
    return Slices(t_ranker, t_valid, stamps[-1] + 1)


def before(users: Users, t: int) -> dict[str, list[SeqItem]]:
    """Every user's events before t (users without any left out)."""
    out = {u: [e for e in s if e.ts_ms < t] for u, s in users.items()}
    return {u: s for u, s in out.items() if s}


def tables_of(users: Users, categories: Mapping[str, str], cfg: HybridConfig
              ) -> CandidateTables:
    counts = fit_counts(users, categories, half_s=cfg.half_s,
                        keep=max(50, cfg.candidates.neighbours))
    return CandidateTables.from_counts(counts, cfg.candidates)


class Chunk(NamedTuple):
    x: torch.Tensor  # (B, C, F)
    mask: torch.Tensor  # (B, C)
    target: torch.Tensor  # (B,) column of the target


def ranker_chunks(rec: HybridRecommender, cases: Sequence[Case], batch: int
                  ) -> tuple[list[Chunk], float]:
    """Ranker inputs of the cases whose target is a candidate, in batches, and the share of
    cases whose target is (the candidate recall)."""
    out: list[Chunk] = []
    hits = 0
    for b in range(0, len(cases), batch):
        part = cases[b: b + batch]
        got = rec.batch([c.history for c in part], [{c.history[-1].item_id} for c in part])
        index, local = rec.tables.index, {n: rec.tables.n + 1 + i
                                          for i, n in enumerate(got.enc.names)}
        tid = torch.tensor([index.get(c.target, local.get(c.target, -1)) for c in part])
        hit = (got.cand.ids == tid[:, None]) & got.cand.mask
        rows = hit.any(1)
        hits += int(rows.sum())
        if rows.any():
            out.append(Chunk(got.x[rows], got.cand.mask[rows], hit[rows].float().argmax(1)))
    return out, hits / max(1, len(cases))


def _mrr(net: RankerNet, chunks: Sequence[Chunk], k: int = 20) -> float:
    total, n = 0.0, 0
    with torch.inference_mode():
        for c in chunks:
            s = net(c.x).masked_fill(~c.mask, float("-inf"))
            t = s.gather(1, c.target[:, None])
            rank = (s > t).sum(1) + 1
            total += float(torch.where(rank <= k, 1.0 / rank, 0.0).sum())
            n += len(rank)
    return total / max(1, n)


def warm_start(net: RankerNet, start: RankerNet) -> None:
    """net computes what `start` does from net's first features (start's), the others
    weighted zero to begin with: training from there can only keep what helps on held-out
    cases (the ranker with the sequence model's features starts as the one without)."""
    n = start.config.n_features
    with torch.no_grad():
        net.mean[:n], net.std[:n] = start.mean, start.std
        for mine, theirs in zip(net.mlp, start.mlp, strict=True):
            if isinstance(mine, torch.nn.Linear) and isinstance(theirs, torch.nn.Linear):
                mine.weight.zero_()
                mine.weight[:, : theirs.weight.shape[1]] = theirs.weight
                mine.bias.copy_(theirs.bias)


def train_ranker(chunks: list[Chunk], cfg: HybridConfig, say: Callable[[str], None],
                 name: str, start: RankerNet | None = None) -> RankerNet:
    """Listwise softmax over each case's candidates; the epoch with the best MRR@20 on a
    held-out tenth of the chunks is kept (epoch 0 too, when warm-started from `start`)."""
    if not chunks:
        raise DataError("no ranker training case has its target among the candidates")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    order = list(range(len(chunks)))
    rng.shuffle(order)
    n_hold = max(1, len(chunks) // 10) if len(chunks) > 1 else 0
    hold = [chunks[i] for i in order[:n_hold]]
    fit = [chunks[i] for i in order[n_hold:]] or hold
    net = RankerNet(RankerConfig(chunks[0].x.shape[2], cfg.hidden))
    net.set_scale(torch.cat([c.x[c.mask] for c in fit])[None], torch.ones(
        (1, sum(int(c.mask.sum()) for c in fit)), dtype=torch.bool))
    best = -1.0
    if start is not None:
        warm_start(net, start)
        best = _mrr(net, hold or fit)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=1e-5)
    best_state, since, epoch = copy.deepcopy(net.state_dict()), 0, 0
    while epoch < cfg.epochs:
        epoch += 1
        net.train()
        rng.shuffle(fit)
        for c in fit:
            loss = listwise_loss(net(c.x), c.mask, c.target)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        net.eval()
        score = _mrr(net, hold or fit)
        if score > best:
            best, best_state, since = score, copy.deepcopy(net.state_dict()), 0
        else:
            since += 1
        if since >= cfg.patience:
            break
    net.load_state_dict(best_state)
    say(f"{name} ranker: {epoch} epochs, held-out mrr@20 among candidates {best:.4f}")
    return net.eval()


@dataclass
class HybridFit:
    """What the slices trained: the sequence model (first slice) and both rankers (second)."""

    seq: SequenceModel
    ranker: RankerNet
    ranker_plain: RankerNet
    slices: Slices
    notes: dict[str, Any]

    def build(self, tables: CandidateTables, cfg: HybridConfig
              ) -> tuple[HybridRecommender, HybridRecommender]:
        """(hybrid, hybrid_without_sequence) reading `tables` (counted up to the scored part)."""
        return (HybridRecommender(tables, self.ranker, self.seq, cfg.top_k),
                HybridRecommender(tables, self.ranker_plain, None))


def fit_hybrid(train: Users, categories: Mapping[str, str], cfg: HybridConfig = HybridConfig(),
               seq_cfg: SeqTrainConfig = SeqTrainConfig(),
               progress: Callable[[str], None] | None = None) -> HybridFit:
    """Sequence model on the events before the ranker slice (early-stopped on the ranker
    slice's cases), rankers on the ranker slice's next-item cases with tables counted before
    it. The validation slice after them is left to the caller."""
    say = progress or (lambda _m: None)
    sl = time_slices(train, cfg)
    first, upto_valid = before(train, sl.t_ranker), before(train, sl.t_valid)
    seq_valid, _ = cases_between(upto_valid, sl.t_ranker, sl.t_valid, seq_cfg.max_len,
                                 cfg.seq_valid_cases, cfg.seed + 1)
    seq, report = train_sequence(first, seq_valid, seq_cfg, say, categories)
    tables = tables_of(first, categories, cfg)
    cases, total = cases_between(upto_valid, sl.t_ranker, sl.t_valid, seq_cfg.max_len,
                                 cfg.ranker_cases, cfg.seed)
    with_seq, plain = HybridRecommender(tables, RankerNet(RankerConfig(1)), seq, cfg.top_k), \
        HybridRecommender(tables, RankerNet(RankerConfig(1)), None)
    chunks, recall_plain = ranker_chunks(plain, cases, cfg.batch)
    ranker_plain = train_ranker(chunks, cfg, say, "hybrid_without_sequence")
    chunks, recall = ranker_chunks(with_seq, cases, cfg.batch)
    ranker = train_ranker(chunks, cfg, say, "hybrid", ranker_plain if cfg.warm_start else None)
    notes = {"sequence_model": {"kind": "gru", **report.to_json()},
             "ranker_cases": len(cases), "ranker_cases_total": total,
             "ranker_candidate_recall": round(recall, 4),
             "ranker_candidate_recall_without_sequence": round(recall_plain, 4)}
    return HybridFit(seq, ranker, ranker_plain, sl, notes)
