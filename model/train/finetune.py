"""Keep the hybrid learning from the events stream: score each poll prequentially (before
learning from it), fine-tune the ranker on it, then the sequence model."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from model.encoding import seq_rows
from model.nets.ranker import listwise_loss
from model.recommenders.hybrid import HybridRecommender
from model.recommenders.sequence import SequenceModel
from model.train.data import Case, rank_cases
from model.train.metrics import rank_metrics
from model.train.ranker import ranker_chunks
from model.train.sequence import Rows, next_item_loss, window_inputs
from model.types import SeqItem

K = 20


@dataclass(frozen=True)
class FineTuneConfig:
    epochs: int = 1  # passes over the poll
    lr: float = 5e-4
    ranker_lr: float = 1e-3
    negatives: int = 1024
    tokens: int = 2048
    max_cases: int = 4096  # next-item cases of a poll used (sampled beyond it)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FineTuneReport:
    """What one poll did: its cases, their metrics before learning from them, the losses."""

    cases: int = 0
    new_items: int = 0
    prequential: dict[str, float] = field(default_factory=dict)  # scored before training
    ranker_loss: float | None = None
    sequence_loss: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def poll_cases(users: Mapping[str, Sequence[SeqItem]], new_from: Mapping[str, int],
               max_len: int) -> list[Case]:
    """A next-item case for each new event (from `new_from[user]` on) with an earlier event,
    unless it repeats the trigger's item (never recommended): the evaluation's rule."""
    out: list[Case] = []
    for u in sorted(users):
        seq = users[u]
        for t in range(max(1, new_from.get(u, 0)), len(seq)):
            if seq[t].item_id != seq[t - 1].item_id:
                out.append(Case(tuple(seq[max(0, t - max_len): t]), seq[t].item_id))
    return out


def sample_cases(rec: HybridRecommender, users: Mapping[str, Sequence[SeqItem]],
                 new_from: Mapping[str, int], cfg: FineTuneConfig) -> list[Case]:
    """The poll's cases `fine_tune` scores and learns from (at most cfg.max_cases, sampled
    under cfg.seed): what a caller scores another model on to compare it with the same cases."""
    max_len = rec.seq.max_len if rec.seq is not None else rec.tables.cfg.history
    cases = poll_cases(users, new_from, max_len)
    if len(cases) > cfg.max_cases:
        cases = random.Random(cfg.seed).sample(cases, cfg.max_cases)
    return cases


def prequential(rec: HybridRecommender, cases: Sequence[Case]) -> dict[str, float]:
    """HR/MRR/NDCG@20 of the model as it is, on cases it has not learned from yet."""
    return rank_metrics(rank_cases(rec, cases, K), [c.target for c in cases], K)


def fine_tune_ranker(rec: HybridRecommender, cases: Sequence[Case], cfg: FineTuneConfig
                     ) -> float | None:
    """One listwise pass per epoch over the cases whose target is a candidate (features from
    the sequence model as it was before this poll, as at training time)."""
    chunks, _ = ranker_chunks(rec, cases, 128)
    if not chunks:
        return None
    net = rec.ranker
    opt = torch.optim.Adam(net.parameters(), lr=cfg.ranker_lr)
    total = 0.0
    net.train()
    for _ in range(cfg.epochs):
        for c in chunks:
            loss = listwise_loss(net(c.x), c.mask, c.target)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach())
    net.eval()
    return total / (len(chunks) * cfg.epochs)


def _grow(model: SequenceModel, users: Mapping[str, Sequence[SeqItem]],
          new_from: Mapping[str, int], categories: Mapping[str, str]) -> int:
    """Add the poll's new items to the vocabulary and the net's table (with their category's
    embedding where the net has one for it); returns how many."""
    vocab, before = model.vocab, len(model.vocab)
    for u, seq in users.items():
        for e in seq[new_from.get(u, 0):]:
            vocab.add(e.item_id)
    recycled = vocab.take_recycled()
    if vocab.size > model.n_items or recycled:
        model.net.grow_items(vocab.size, recycled)
    item_cat = model.net.item_cat
    if item_cat is not None and model.categories:
        table = vocab.item_table()
        for i in range(len(table)):
            name = table[i]
            if name is not None and item_cat[i] == 0 and name in categories:
                item_cat[i] = model.categories.get(categories[name], 0)
    return len(vocab) - before


def _rows(model: SequenceModel, users: Mapping[str, Sequence[SeqItem]],
          new_from: Mapping[str, int]) -> list[tuple[Rows, int]]:
    """Windows of max_len + 1 events over each user's new events (cut from the end, each with
    the events before it as context), with the index of each window's first new event."""
    n = model.max_len
    rows: list[tuple[Rows, int]] = []
    for u in sorted(users):
        seq, first = users[u], max(1, new_from.get(u, 0))
        end = len(seq)
        while end > first:
            lo = max(0, end - n - 1)
            rows.append((seq_rows(seq[lo:end], model.vocab, end - lo), first - lo))
            end -= n
    return rows


def fine_tune_sequence(model: SequenceModel, users: Mapping[str, Sequence[SeqItem]],
                       new_from: Mapping[str, int], cfg: FineTuneConfig,
                       categories: Mapping[str, str] | None = None) -> float | None:
    """Next-item training whose targets are the poll's new events only (earlier events are
    context); the vocabulary grows by the poll's new items first."""
    _grow(model, users, new_from, categories or {})
    rows = _rows(model, users, new_from)
    if not rows:
        return None
    net, rng = model.net, random.Random(cfg.seed)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    per = max(1, cfg.tokens // (model.max_len + 1))
    total, steps = 0.0, 0
    net.train()
    for _ in range(cfg.epochs):
        rng.shuffle(rows)
        for b in range(0, len(rows), per):
            part = rows[b: b + per]
            batch, targets = window_inputs([r for r, _ in part], model.max_len)
            for i, (_, first_target) in enumerate(part):  # input i predicts event i + 1
                targets[i, : max(0, first_target - 1)] = -100
            if not (targets >= 0).any():
                continue
            loss = next_item_loss(net, batch, targets, cfg.negatives)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total, steps = total + float(loss.detach()), steps + 1
    net.eval()
    return total / steps if steps else None


def fine_tune(rec: HybridRecommender, users: Mapping[str, Sequence[SeqItem]],
              new_from: Mapping[str, int] | None = None,
              cfg: FineTuneConfig = FineTuneConfig(),
              categories: Mapping[str, str] | None = None) -> FineTuneReport:
    """Learn from one poll of the events stream, in place.

    users: each user's recent history with the poll's events at the end; new_from: the index
    of each user's first new event (default 0: all new). Order matters: the poll is scored
    first (prequential: the model has not seen it), the ranker learns from it with the
    sequence model's features as they were (the sequence model has not trained on these
    targets, as in training), then the sequence model learns from it and grows its table for
    new items. Publish the result as a new version: cached user states name the old version
    and are re-encoded lazily by `HybridRecommender.advance`.
    """
    new_from = new_from or {}
    cases = sample_cases(rec, users, new_from, cfg)
    report = FineTuneReport(cases=len(cases))
    if not cases:
        return report
    report.prequential = {k: round(v, 5) for k, v in prequential(rec, cases).items()}
    report.ranker_loss = fine_tune_ranker(rec, cases, cfg)
    if rec.seq is not None:
        before = len(rec.seq.vocab)
        report.sequence_loss = fine_tune_sequence(rec.seq, users, new_from, cfg, categories)
        report.new_items = len(rec.seq.vocab) - before
        rec.sequence_changed()
    return report
