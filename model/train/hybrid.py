"""Train the hybrid on time slices: the sequence model on the first, the ranker on the next
(next-item targets the sequence model never trained on), tables counted up to the scored part."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from model.errors import DataError
from model.nets.ranker import RankerConfig, RankerNet
from model.recommenders.candidates import CandidateConfig, CandidateTables
from model.recommenders.counts import fit_counts
from model.recommenders.hybrid import HybridRecommender
from model.recommenders.sequence import SequenceModel
from model.train.data import Case, cases_between
from model.train.finetune import FineTuneConfig, fine_tune_sequence
from model.train.ranker import Chunk, RankerTrainConfig, ranker_chunks, train_ranker
from model.train.sequence import SeqTrainConfig, train_sequence
from model.types import SeqItem

Users = Mapping[str, Sequence[SeqItem]]


@dataclass(frozen=True)
class HybridConfig:
    ranker_frac: float = 0.2  # events (before the validation slice): the ranker's targets
    valid_frac: float = 0.15  # last events of the training period: picks the served method
    ranker_cases: int = 8000  # next-item cases of the ranker slice used (sampled)
    seq_valid_cases: int = 1000  # cases of the ranker slice that early-stop the sequence model
    ranker: RankerTrainConfig = field(default_factory=RankerTrainConfig)
    top_k: int = 50  # the sequence model's top items added to the candidates
    warm_start: bool = True  # the hybrid's ranker starts as the one without the sequence
    refit_rankers: bool = True  # after validation, rankers retrained on both later slices
    refresh_epochs: int = 1  # fine-tuning of the sequence model on the slices after its own
    refresh_lr: float = 1e-3
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


@dataclass
class HybridFit:
    """What the slices trained: the sequence model (first slice) and both rankers (second)."""

    seq: SequenceModel
    ranker: RankerNet
    ranker_plain: RankerNet
    slices: Slices
    notes: dict[str, Any]
    # the ranker slice's inputs (with, without the sequence model): what `refit` adds to
    chunks: tuple[list[Chunk], list[Chunk]] = field(default_factory=lambda: ([], []))

    def refit(self, stage: tuple[HybridRecommender, HybridRecommender], cases: Sequence[Case],
              cfg: HybridConfig, say: Callable[[str], None]) -> HybridFit:
        """Both rankers trained afresh on the ranker slice's cases and `cases` (the slice
        after it, featured by `stage`: the pair `build` made for it), as the neural methods
        refit on the whole training period once validation has spoken."""
        rcfg = cfg.ranker
        more_seq, _ = ranker_chunks(stage[0], cases, rcfg.batch)
        more_plain, _ = ranker_chunks(stage[1], cases, rcfg.batch)
        plain = train_ranker([*self.chunks[1], *more_plain], rcfg, say,
                             "hybrid_without_sequence (refit)")
        ranker = train_ranker([*self.chunks[0], *more_seq], rcfg, say, "hybrid (refit)",
                              plain if cfg.warm_start else None)
        return HybridFit(self.seq, ranker, plain, self.slices, self.notes)

    def build(self, users: Users, categories: Mapping[str, str], cfg: HybridConfig
              ) -> tuple[HybridRecommender, HybridRecommender]:
        """(hybrid, hybrid_without_sequence) for what follows `users`' events: tables counted
        over all of them, and (with `cfg.refresh_epochs`) a copy of the sequence model
        fine-tuned on their events after its own training slice, as the stream will keep it
        fine-tuned (`model.train.finetune`): one slice behind what it scores, as when the
        ranker learned from it."""
        tables = tables_of(users, categories, cfg)
        seq = self.seq
        if cfg.refresh_epochs:
            seq = copy.deepcopy(self.seq)
            new_from = {u: next((i for i, e in enumerate(s) if e.ts_ms >= self.slices.t_ranker),
                                len(s)) for u, s in users.items()}
            fine_tune_sequence(seq, users, new_from, FineTuneConfig(
                epochs=cfg.refresh_epochs, lr=cfg.refresh_lr, seed=cfg.seed), categories)
        return (HybridRecommender(tables, self.ranker, seq, cfg.top_k),
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
    rcfg = cfg.ranker
    chunks_plain, recall_plain = ranker_chunks(plain, cases, rcfg.batch)
    ranker_plain = train_ranker(chunks_plain, rcfg, say, "hybrid_without_sequence")
    chunks, recall = ranker_chunks(with_seq, cases, rcfg.batch)
    ranker = train_ranker(chunks, rcfg, say, "hybrid", ranker_plain if cfg.warm_start else None)
    notes = {"sequence_model": {"kind": "gru", **report.to_json()},
             "ranker_cases": len(cases), "ranker_cases_total": total,
             "ranker_candidate_recall": round(recall, 4),
             "ranker_candidate_recall_without_sequence": round(recall_plain, 4)}
    return HybridFit(seq, ranker, ranker_plain, sl, notes, (chunks, chunks_plain))
