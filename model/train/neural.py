"""Train a sequential recommender (SASRec or GRU) on per-user sequences, within a time budget."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from model.encoding import SeqBatch, encode_rows, seq_rows
from model.nets import SeqRecConfig, SeqRecNet, build_recommender
from model.neural import NeuralRecommender
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
    explore = hq @ net.item_emb(cand).T + net.item_bias[cand]
    explore = explore.masked_fill((cand < RESERVED)[None, :] | (cand[None, :] == cur[:, None]),
                                  float("-inf"))
    copy = net.copy_scores(hq.unsqueeze(1), x[pos[0]]).squeeze(1)  # (N, L)
    steps = torch.arange(h.shape[1])
    hist = batch.items[pos[0]]
    valid = (steps[None, :] <= pos[1][:, None]) & (hist != cur[:, None])
    logp = net.mixture(hq, explore, copy, valid, hist_c[pos[0]])
    return -logp.gather(1, tgt_c[:, None]).mean()


def train_sequence_model(kind: str, train: Mapping[str, Sequence[SeqItem]],
                         cfg: TrainConfig = TrainConfig(),
                         progress: Callable[[str], None] | None = None
                         ) -> tuple[NeuralRecommender, int]:
    """Returns the model and the epochs run.

    Next-item training at every position; see `sampled_loss`. Targets that are unknown items
    or that repeat the current item are ignored (the trigger is never recommended).
    """
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    vocab = build_vocab(train, cfg.min_count, cfg.capacity)
    net = build_recommender(kind, SeqRecConfig(
        n_items=vocab.size, dim=cfg.dim, layers=cfg.layers, heads=cfg.heads,
        max_len=cfg.max_len, dropout=cfg.dropout, repeat=cfg.repeat))
    data = windows(train, vocab, cfg.max_len)
    if not data:
        raise ValueError("no training sequences with at least two events")
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    t0 = time.perf_counter()
    say = progress or (lambda _m: None)
    net.train()
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        rng.shuffle(data)
        total = 0.0
        count = 0
        for b in range(0, len(data), cfg.batch_size):
            if b and time.perf_counter() - t0 > cfg.budget_s:
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
            loss = sampled_loss(net, batch, targets, cfg.negatives, vocab.size)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
            valid = int((targets >= 0).sum())
            total += float(loss.detach()) * valid
            count += valid
        elapsed = time.perf_counter() - t0
        say(f"{kind}: epoch {epoch}/{cfg.epochs} loss {total / max(1, count):.3f} "
            f"({elapsed:.0f}s, {len(data)} windows, {len(vocab)} items)")
        if elapsed > cfg.budget_s:
            say(f"{kind}: stopping after epoch {epoch}: time budget {cfg.budget_s:.0f}s spent")
            break
    net.eval()
    return NeuralRecommender(net, vocab), epoch


__all__ = ["TrainConfig", "train_sequence_model", "build_vocab", "UNK"]
