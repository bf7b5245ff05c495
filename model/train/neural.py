"""Train a sequential recommender (SASRec or GRU) on per-user sequences, within a time budget."""

from __future__ import annotations

import copy
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from model.encoding import SeqBatch, encode_rows, seq_rows
from model.errors import DataError
from model.nets import SeqRecConfig, SeqRecNet, build_recommender
from model.recommenders.neural import NeuralRecommender
from model.train.data import Case, cases_between, rank_cases
from model.train.metrics import rank_metrics
from model.types import SeqItem
from model.vocab import RESERVED, UNK, ItemVocab


@dataclass(frozen=True)
class TrainConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_len: int = 50
    dropout: float = 0.2
    repeat: bool = True
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    budget_s: float = 90.0
    min_count: int = 1
    negatives: int = 2048
    capacity: int = 200_000
    seed: int = 0
    validate: bool = True  # choose the epoch count on the end of the training period
    valid_frac: float = 0.15
    valid_cases: int = 1000
    patience: int = 2


def build_vocab(train: Mapping[str, Sequence[SeqItem]], min_count: int, capacity: int
                ) -> ItemVocab:
    counts: Counter[str] = Counter(e.item_id for s in train.values() for e in s)
    vocab = ItemVocab(capacity)
    for item, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if c >= min_count and len(vocab) < capacity:
            vocab.add(item, c)
    return vocab


def windows(train: Mapping[str, Sequence[SeqItem]], vocab: ItemVocab, max_len: int
            ) -> list[list[tuple[int, int, int]]]:
    """Each user's sequence cut from the end into windows of max_len + 1 events."""
    out: list[list[tuple[int, int, int]]] = []
    for u in sorted(train):
        rows = seq_rows(train[u], vocab, len(train[u]))
        end = len(rows)
        while end >= 2:
            out.append(rows[max(0, end - max_len - 1): end])
            end -= max_len
    return out


def sampled_loss(net: SeqRecNet, batch: SeqBatch, targets: torch.Tensor, negatives: int,
                 n_items: int) -> torch.Tensor:
    """Negative log-likelihood of the next item with the explore softmax over a candidate set.

    Candidates: every item in the batch's sequences and targets plus `negatives` uniform
    random items, so the copy part (which only ever names items of the sequence) is exact.
    Only positions with a target are scored (cheap on sparse targets).
    """
    h, x = net.encode(batch)  # (B, L, d) states and the copy head's keys
    pos = (targets >= 0).nonzero(as_tuple=True)
    rand = torch.randint(RESERVED, max(RESERVED + 1, n_items), (negatives,))
    cand, inverse = torch.unique(torch.cat([batch.items.reshape(-1), targets[pos], rand]),
                                 return_inverse=True)
    n_hist = batch.items.numel()
    hist_c = inverse[:n_hist].view_as(batch.items)  # (B, L) candidate index of each event
    tgt_c = inverse[n_hist: n_hist + len(pos[0])]
    hq = h[pos]  # (N, d)
    cur = batch.items[pos]
    explore = hq @ net.item_vectors(cand).T + net.item_bias[cand]
    explore = explore.masked_fill((cand < RESERVED)[None, :] | (cand[None, :] == cur[:, None]),
                                  float("-inf"))
    # Only the target's log-probability is needed, so the mixture is evaluated at the target
    # alone (same value as `net.mixture(...)[target]`, see the unit test): the full (N, C)
    # mixture costs several passes over N x C floats and dominated the training step.
    log_explore: torch.Tensor = (explore.gather(1, tgt_c[:, None]).squeeze(1)
                                 - torch.logsumexp(explore, 1))
    if not net.config.repeat:
        return -log_explore.mean()
    copy = net.copy_scores(hq.unsqueeze(1), x[pos[0]], pos[1][:, None]).squeeze(1)  # (N, L)
    steps = torch.arange(h.shape[1])
    hist = batch.items[pos[0]]
    valid = (steps[None, :] <= pos[1][:, None]) & (hist != cur[:, None])
    has = valid.any(1)
    p_pos = torch.softmax(copy.masked_fill(~valid, -1e9), dim=1)
    p_copy = (p_pos * ((hist_c[pos[0]] == tgt_c[:, None]) & valid & has[:, None])).sum(1)
    g = net.gate(hq).squeeze(-1)
    log_g = torch.where(has, torch.nn.functional.logsigmoid(g), -1e4)
    log_1g = torch.where(has, torch.nn.functional.logsigmoid(-g), 0.0)
    logp = torch.logaddexp(log_1g + log_explore, log_g + torch.log(p_copy.clamp_min(1e-30)))
    return -logp.mean()


@dataclass
class TrainReport:
    """What training did: epochs run on the final data, and the early-stopping trace."""

    epochs: int
    best_epoch: int | None = None  # picked on the validation slice (None: no validation)
    valid_ndcg: list[float] = field(default_factory=list)  # per epoch of the selection run
    refit: bool = False  # retrained on the whole period (else: the validated model serves)
    valid_metrics: dict[str, float] = field(default_factory=dict)  # of the best epoch

    def to_json(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch,
                "valid_ndcg@20": [round(v, 4) for v in self.valid_ndcg], "refit": self.refit}


def validation_split(train: Mapping[str, Sequence[SeqItem]], frac: float, max_cases: int,
                     seed: int) -> tuple[dict[str, list[SeqItem]], list[Case]]:
    """Inner training part (events before the last `frac` of the training period) and the
    next-item cases of that last part, scored as the test period is."""
    stamps = sorted(e.ts_ms for s in train.values() for e in s)
    if len(stamps) < 50:
        return {}, []
    t_valid = stamps[min(len(stamps) - 1, int(len(stamps) * (1.0 - frac)))]
    inner = {u: [e for e in s if e.ts_ms < t_valid] for u, s in train.items()}
    inner = {u: s for u, s in inner.items() if s}
    cases, _ = cases_between(train, t_valid, stamps[-1] + 1, 50, max_cases, seed)
    return inner, cases


def _valid_metrics(rec: NeuralRecommender, cases: Sequence[Case], k: int = 20
                   ) -> dict[str, float]:
    return rank_metrics(rank_cases(rec, cases, k), [c.target for c in cases], k)


def _epoch(net: SeqRecNet, opt: torch.optim.Optimizer,
           data: Sequence[Sequence[tuple[int, int, int]]], n_items: int, cfg: TrainConfig,
           deadline: float) -> tuple[float, int]:
    """One pass over the (shuffled) windows: summed loss and the number of targets it saw."""
    total = 0.0
    count = 0
    for b in range(0, len(data), cfg.batch_size):
        if b and time.perf_counter() > deadline:
            break  # budget spent mid-epoch: stop at the next batch boundary
        chunk = data[b: b + cfg.batch_size]
        batch = encode_rows([r[:-1] for r in chunk], cfg.max_len)
        n = batch.items.shape[1]
        targets = torch.full((len(chunk), n), -100, dtype=torch.int64)
        for i, r in enumerate(chunk):
            t = torch.tensor([x[0] for x in r[1:]], dtype=torch.int64)[:n]
            targets[i, : len(t)] = t
        ignore = (targets < RESERVED) | (targets == batch.items)
        targets[ignore] = -100
        if not (targets >= 0).any():
            continue
        loss = sampled_loss(net, batch, targets, cfg.negatives, n_items)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        valid_n = int((targets >= 0).sum())
        total += float(loss.detach()) * valid_n
        count += valid_n
    return total, count


def _fit(kind: str, train: Mapping[str, Sequence[SeqItem]], cfg: TrainConfig, epochs: int,
         deadline: float, say: Callable[[str], None], valid: Sequence[Case] = ()
         ) -> tuple[NeuralRecommender, TrainReport]:
    """Train from scratch for up to `epochs` or until `deadline`; with `valid` cases, keep the
    weights of the best validation epoch and stop after `cfg.patience` epochs without gain."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    vocab = build_vocab(train, cfg.min_count, cfg.capacity)
    net = build_recommender(kind, SeqRecConfig(
        n_items=vocab.size, dim=cfg.dim, layers=cfg.layers, heads=cfg.heads,
        max_len=cfg.max_len, dropout=cfg.dropout, repeat=cfg.repeat))
    data = windows(train, vocab, cfg.max_len)
    if not data:
        raise DataError("no training sequences with at least two events")
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    t0 = time.perf_counter()
    report = TrainReport(0)
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    phase = "select" if valid else "fit"
    net.train()
    for epoch in range(1, epochs + 1):
        rng.shuffle(data)
        total, count = _epoch(net, opt, data, vocab.size, cfg, deadline)
        report.epochs = epoch
        msg = (f"{kind} [{phase}]: epoch {epoch}/{epochs} loss {total / max(1, count):.3f} "
               f"({time.perf_counter() - t0:.0f}s, {len(data)} windows, {len(vocab)} items)")
        if valid:
            metrics = _valid_metrics(NeuralRecommender(net, vocab), valid)
            score = metrics["ndcg@20"]
            net.train()
            report.valid_ndcg.append(score)
            msg += f" validation ndcg@20 {score:.4f}"
            if best is None or score > best[0]:
                best = (score, copy.deepcopy(net.state_dict()))
                report.best_epoch, report.valid_metrics = epoch, metrics
        say(msg)
        if time.perf_counter() > deadline:
            say(f"{kind} [{phase}]: stopping after epoch {epoch}: time budget spent")
            break
        if valid and report.best_epoch is not None and epoch - report.best_epoch >= cfg.patience:
            break
    if best is not None:
        net.load_state_dict(best[1])
    net.eval()
    return NeuralRecommender(net, vocab), report


def train_sequence_model(kind: str, train: Mapping[str, Sequence[SeqItem]],
                         cfg: TrainConfig = TrainConfig(),
                         progress: Callable[[str], None] | None = None,
                         validation: tuple[Mapping[str, Sequence[SeqItem]], Sequence[Case]]
                         | None = None) -> tuple[NeuralRecommender, TrainReport]:
    """Next-item training at every position (see `sampled_loss`) within `cfg.budget_s`.

    Targets that are unknown items or repeat the current item are ignored (the trigger is
    never recommended). With `cfg.validate`, the number of epochs is chosen first: train on
    all but the last `valid_frac` of the training period, score that part each epoch (early
    stopping, `patience`, best weights kept), then, if the budget left allows, train afresh on
    the whole training period for the best number of epochs. `validation` (the inner training
    part, the cases after it) replaces that split, so that every method is selected on the
    same cases. Sparse logs (most items seen
    once or twice) overfit within a few epochs, so more epochs can lose to fewer: the count is
    measured, not fixed.
    """
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    deadline = t0 + cfg.budget_s
    inner: Mapping[str, Sequence[SeqItem]]
    cases: Sequence[Case]
    if validation is not None:
        inner, cases = validation
    else:
        inner, cases = (validation_split(train, cfg.valid_frac, cfg.valid_cases, cfg.seed)
                        if cfg.validate else ({}, []))
    if not cases:
        return _fit(kind, train, cfg, cfg.epochs, deadline, say)
    selected, sel = _fit(kind, inner, cfg, cfg.epochs, deadline, say, cases)
    best = sel.best_epoch or sel.epochs
    # refit only when the budget left covers `best` epochs on the larger data (with margin):
    # a refit cut short by the budget would be worse than the validated model
    per_epoch = (time.perf_counter() - t0) / max(1, sel.epochs)
    n_all, n_inner = (sum(len(s) for s in d.values()) for d in (train, inner))
    need = per_epoch * best * n_all / max(1, n_inner) * 1.2
    left = deadline - time.perf_counter()
    if need > left:
        say(f"{kind}: best validation epoch {best} (ndcg@20 {max(sel.valid_ndcg):.4f}); "
            f"serving it (a refit on the whole period needs ~{need:.0f}s, {left:.0f}s left)")
        sel.refit = False
        return selected, sel
    say(f"{kind}: best validation epoch {best} (ndcg@20 {max(sel.valid_ndcg):.4f}); "
        f"refitting on the whole training period for {best} epochs")
    rec, final = _fit(kind, train, cfg, best, deadline, say)
    final.best_epoch, final.valid_ndcg, final.refit = best, sel.valid_ndcg, True
    final.valid_metrics = sel.valid_metrics
    return rec, final


__all__ = ["TrainConfig", "TrainReport", "build_vocab", "train_sequence_model", "UNK"]
