"""Train and fine-tune the streaming sequence model (a GRU): next-item cross-entropy over the
whole item table or many sampled items, time-ordered early stopping, prequential fine-tuning."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from model.encoding import SeqBatch, encode_rows, seq_rows
from model.errors import DataError
from model.nets import SeqRecConfig
from model.nets.gru import GRURec
from model.recommenders.sequence import SequenceModel
from model.train.data import Case
from model.train.metrics import rank_metrics
from model.train.neural import build_vocab
from model.types import SeqItem
from model.vocab import RESERVED

Rows = list[tuple[int, int, int]]


@dataclass(frozen=True)
class SeqTrainConfig:
    dim: int = 64
    layers: int = 1  # GRU layers
    max_len: int = 50  # events per training window (the state itself runs over any length)
    dropout: float = 0.2
    # Items scored per step: the step's targets plus uniform random items up to this many;
    # at or above the table size the loss is the exact cross-entropy over the whole table.
    # Many negatives come close to the full softmax (gSASRec, Petrov & Macdonald 2023), which
    # beats one-negative BCE by far (Klenitskiy & Vasilev 2023).
    negatives: int = 1024
    tokens: int = 2048  # events per step (windows of like length batched together)
    lr: float = 3e-3
    epochs: int = 30
    patience: int = 2
    budget_s: float = 90.0
    capacity: int = 200_000
    categories: bool = True  # category embeddings when the items have categories
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SeqTrainReport:
    epochs: int = 0
    best_epoch: int | None = None
    valid_ndcg: list[float] = field(default_factory=list)
    train_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch,
                "valid_ndcg@20": [round(v, 4) for v in self.valid_ndcg],
                "train_s": round(self.train_s, 2)}


def windows(users: Mapping[str, Sequence[SeqItem]], model: SequenceModel) -> list[Rows]:
    """Each user's sequence in windows of max_len + 1 events, cut from the end."""
    out: list[Rows] = []
    n = model.max_len
    for u in sorted(users):
        rows = seq_rows(users[u], model.vocab, len(users[u]))
        end = len(rows)
        while end >= 2:
            out.append(rows[max(0, end - n - 1): end])
            end -= n
    return out


def batches(data: list[Rows], tokens: int, rng: random.Random) -> list[list[Rows]]:
    """Windows of like length together, at most `tokens` events a batch, in random order."""
    data = data[:]
    rng.shuffle(data)
    data.sort(key=len)
    out: list[list[Rows]] = []
    cur: list[Rows] = []
    for w in data:
        if cur and (len(cur) + 1) * len(w) > tokens:
            out.append(cur)
            cur = []
        cur.append(w)
    if cur:
        out.append(cur)
    rng.shuffle(out)
    return out


def window_inputs(chunk: list[Rows], max_len: int) -> tuple[SeqBatch, torch.Tensor]:
    """Inputs (all but each window's last event) and next-item targets (-100: none)."""
    batch = encode_rows([r[:-1] for r in chunk], max_len, pad_to=max(len(r) - 1 for r in chunk))
    n = batch.items.shape[1]
    targets = torch.full((len(chunk), n), -100, dtype=torch.int64)
    for i, r in enumerate(chunk):
        t = [x[0] for x in r[1: n + 1]]
        targets[i, : len(t)] = torch.tensor(t, dtype=torch.int64)
    targets[(targets < RESERVED) | (targets == batch.items)] = -100
    return batch, targets


def next_item_loss(net: GRURec, batch: SeqBatch, targets: torch.Tensor, negatives: int
                   ) -> torch.Tensor:
    """Cross-entropy of each target over itself, the step's other targets and uniform random
    items (the whole table when `negatives` covers it); the current item is never a class."""
    h, _ = net.encode(batch)
    pos = (targets >= 0).nonzero(as_tuple=True)
    hq, tgt, cur = h[pos], targets[pos], batch.items[pos]
    n_items = net.config.n_items
    if negatives >= n_items - RESERVED:
        cand = torch.arange(RESERVED, n_items)
        label = tgt - RESERVED
    else:
        rand = torch.randint(RESERVED, n_items, (negatives,))
        cand, inverse = torch.unique(torch.cat([tgt, rand]), return_inverse=True)
        label = inverse[: len(tgt)]
    logits = torch.addmm(net.item_bias[cand], hq, net.item_vectors(cand).T)
    logits = logits.masked_fill(cand[None, :] == cur[:, None], float("-inf"))
    return torch.nn.functional.cross_entropy(logits, label)


def sequence_ndcg(model: SequenceModel, cases: Sequence[Case], k: int = 20) -> float:
    """NDCG@k of the sequence model alone over the whole table (the trigger never counts)."""
    ranked: list[list[str]] = []
    table = model.vocab.item_table()
    for b in range(0, len(cases), 256):
        part = cases[b: b + 256]
        h = model.readout(model.encode([c.history for c in part]))
        top = model.top(h, k + 1).tolist()
        for c, row in zip(part, top, strict=True):
            names = [table[i] for i in row if i < len(table)]
            ranked.append([x for x in names if x and x != c.history[-1].item_id][:k])
    return rank_metrics(ranked, [c.target for c in cases], k)[f"ndcg@{k}"]


def _epoch(model: SequenceModel, opt: torch.optim.Optimizer, data: list[Rows],
           cfg: SeqTrainConfig, rng: random.Random, deadline: float) -> float:
    net = model.net
    net.train()
    total, steps = 0.0, 0
    for chunk in batches(data, cfg.tokens, rng):
        if steps and time.perf_counter() > deadline:
            break
        batch, targets = window_inputs(chunk, model.max_len)
        if not (targets >= 0).any():
            continue
        loss = next_item_loss(net, batch, targets, cfg.negatives)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        total += float(loss.detach())
        steps += 1
    net.eval()
    return total / max(1, steps)


def new_model(users: Mapping[str, Sequence[SeqItem]], categories: Mapping[str, str],
              cfg: SeqTrainConfig) -> SequenceModel:
    """An untrained GRU over the items of `users`, with category embeddings when the items
    have categories (`cfg.categories`)."""
    vocab = build_vocab(users, 1, cfg.capacity)
    table = vocab.item_table()
    cats = sorted({categories[i] for i in table if i is not None and i in categories})
    n_cats = len(cats) if cfg.categories else 0
    net = GRURec(SeqRecConfig(n_items=vocab.size, dim=cfg.dim, layers=2 * cfg.layers,
                              max_len=cfg.max_len, dropout=cfg.dropout, repeat=False,
                              n_categories=n_cats))
    index = {c: i + 1 for i, c in enumerate(cats)} if n_cats else {}
    if n_cats:
        net.set_categories(torch.tensor(
            [index.get(categories.get(i or "", ""), 0) for i in table], dtype=torch.int64))
    return SequenceModel(net, vocab, categories=index)


def train_sequence(users: Mapping[str, Sequence[SeqItem]], valid: Sequence[Case],
                   cfg: SeqTrainConfig = SeqTrainConfig(),
                   progress: Callable[[str], None] | None = None,
                   categories: Mapping[str, str] | None = None
                   ) -> tuple[SequenceModel, SeqTrainReport]:
    """A fresh GRU trained on `users` within `cfg.budget_s`; with `valid` cases (after the
    training data in time) the best epoch's weights are kept, patience `cfg.patience`."""
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model = new_model(users, categories or {}, cfg)
    net = model.net
    data = windows(users, model)
    if not data:
        raise DataError("no training sequence has two events")
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    report = SeqTrainReport()
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    deadline = t0 + cfg.budget_s
    for epoch in range(1, cfg.epochs + 1):
        loss = _epoch(model, opt, data, cfg, rng, deadline)
        report.epochs = epoch
        msg = f"sequence gru: epoch {epoch} loss {loss:.3f} ({time.perf_counter() - t0:.0f}s)"
        if valid:
            score = sequence_ndcg(model, valid)
            report.valid_ndcg.append(score)
            msg += f" validation ndcg@20 {score:.4f}"
            if best is None or score > best[0]:
                best, report.best_epoch = (score, copy.deepcopy(net.state_dict())), epoch
        say(msg)
        if time.perf_counter() > deadline or (
                report.best_epoch is not None and epoch - report.best_epoch >= cfg.patience):
            break
    if best is not None:
        net.load_state_dict(best[1])
    report.train_s = time.perf_counter() - t0
    return model, report
