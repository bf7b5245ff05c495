"""Train the hybrid's ranker: listwise over each next-item case's candidates, early-stopped
on held-out cases, optionally warm-started from a ranker over fewer features."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch

from model.errors import DataError
from model.nets.ranker import RankerConfig, RankerNet, listwise_loss
from model.recommenders.hybrid import HybridRecommender
from model.train.data import Case


@dataclass(frozen=True)
class RankerTrainConfig:
    hidden: int = 32
    epochs: int = 40
    lr: float = 3e-3
    batch: int = 128  # cases per step
    patience: int = 4
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def train_ranker(chunks: list[Chunk], cfg: RankerTrainConfig, say: Callable[[str], None],
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


