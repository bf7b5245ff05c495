"""Ranking metrics (HR/MRR/NDCG@k) and binary classification metrics (ROC-AUC, PR-AUC, log
loss, a paired bootstrap of two models' ROC-AUC)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from model.errors import ConfigError, DataError

__all__ = [
    "auc_rows", "log_loss", "negative_weight", "paired_auc_bootstrap", "pr_auc", "rank_metrics",
    "roc_auc",
]


def rank_metrics(ranked: Sequence[Sequence[str]], targets: Sequence[str], k: int = 20
                 ) -> dict[str, float]:
    """HR@k (= Recall@k with one target), MRR@k and NDCG@k, averaged over cases.

    A target at 1-based rank r <= k scores hit 1, reciprocal rank 1/r and DCG 1/log2(r + 1)
    (ideal DCG is 1 with a single relevant item); outside the top k everything is 0.
    """
    if len(ranked) != len(targets):
        raise ConfigError("one ranked list per target")
    n = len(targets)
    hr = mrr = ndcg = 0.0
    for row, t in zip(ranked, targets, strict=True):
        top = list(row[:k])
        if t in top:
            r = top.index(t) + 1
            hr += 1.0
            mrr += 1.0 / r
            ndcg += 1.0 / math.log2(r + 1)
    d = max(1, n)
    return {f"hr@{k}": hr / d, f"mrr@{k}": mrr / d, f"ndcg@{k}": ndcg / d}


def _average_ranks(scores: Sequence[float]) -> list[float]:
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        avg = (i + j) / 2.0 + 1.0
        for m in range(i, j + 1):
            ranks[order[m]] = avg
        i = j + 1
    return ranks


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Probability a random positive outscores a random negative (ties count half)."""
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        raise DataError("ROC-AUC needs both classes")
    ranks = _average_ranks(scores)
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)


def pr_auc(labels: Sequence[int], scores: Sequence[float], neg_weight: float = 1.0) -> float:
    """Average precision: sum over thresholds of precision x recall step, ties as one step.

    neg_weight reweights negatives to report precision at another base rate than the
    sample's (see `negative_weight`).
    """
    pos = sum(1 for y in labels if y)
    if pos == 0:
        raise DataError("PR-AUC needs positives")
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    tp = fp = 0.0
    ap = 0.0
    prev_recall = 0.0
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and scores[order[j]] == scores[order[i]]:
            if labels[order[j]]:
                tp += 1
            else:
                fp += neg_weight
            j += 1
        recall = tp / pos
        precision = tp / (tp + fp) if tp + fp > 0 else 0.0
        ap += (recall - prev_recall) * precision
        prev_recall = recall
        i = j
    return ap


def negative_weight(sample_rate: float, target_rate: float) -> float:
    """Weight for each negative so that a sample with positive rate `sample_rate` behaves like
    one with `target_rate`: P / (P + w N) = target  =>  w = (s / (1 - s)) / (t / (1 - t))."""
    return (sample_rate / (1.0 - sample_rate)) / (target_rate / (1.0 - target_rate))


def auc_rows(scores: torch.Tensor, wpos: torch.Tensor, wneg: torch.Tensor) -> torch.Tensor:
    """ROC-AUC for each row of weights ([B, n] per record, ties count half): the weighted
    Mann-Whitney statistic, with one sort of the scores shared by every row."""
    _, gid = torch.unique(scores, return_inverse=True)  # tie groups, ascending score
    groups = int(gid.max()) + 1 if gid.numel() else 0
    neg = torch.zeros(wneg.shape[0], groups, dtype=wneg.dtype).index_add_(1, gid, wneg)
    credit = neg.cumsum(1) - 0.5 * neg  # negatives below a group, plus half of its own
    wins = (wpos * credit[:, gid]).sum(1)
    return wins / (wpos.sum(1) * wneg.sum(1)).clamp_min(1e-12)


def paired_auc_bootstrap(y: Sequence[int], a: Sequence[float], b: Sequence[float],
                         rounds: int, seed: int) -> float:
    """P(AUC of a > AUC of b) over a bootstrap that resamples positives and negatives apart
    (every replicate keeps both classes, at their counts) and scores a and b on the same
    draws."""
    yt = torch.tensor(list(y), dtype=torch.bool)
    pos, neg = torch.nonzero(yt).flatten(), torch.nonzero(~yt).flatten()
    if rounds <= 0 or not len(pos) or not len(neg):
        return 0.0
    gen = torch.Generator().manual_seed(seed)
    n = len(y)

    def weights(idx: torch.Tensor) -> torch.Tensor:
        draws = idx[torch.randint(len(idx), (rounds, len(idx)), generator=gen)]
        return torch.zeros(rounds, n, dtype=torch.float64).scatter_add_(
            1, draws, torch.ones(rounds, len(idx), dtype=torch.float64))

    wp, wn = weights(pos), weights(neg)
    auc_a = auc_rows(torch.tensor(list(a), dtype=torch.float64), wp, wn)
    auc_b = auc_rows(torch.tensor(list(b), dtype=torch.float64), wp, wn)
    return float((auc_a > auc_b).double().mean())


def log_loss(y: Sequence[int], p: Sequence[float]) -> float:
    """Mean negative log-likelihood of labels y under probabilities p (clipped at 1e-7)."""
    total = math.fsum(-math.log(min(max(q if t else 1.0 - q, 1e-7), 1.0))
                      for t, q in zip(y, p, strict=True))
    return total / max(1, len(y))


def hit_curve(ranked: Sequence[Sequence[str]], targets: Sequence[str], max_k: int
              ) -> list[float]:
    """HR@K for K = 1..max_k: the share of cases whose target is in the top K."""
    if len(ranked) != len(targets):
        raise ConfigError("one ranked list per target")
    first_hit = [0] * (max_k + 1)  # first_hit[r]: cases whose target sits at 1-based rank r
    for row, t in zip(ranked, targets, strict=True):
        top = list(row[:max_k])
        if t in top:
            first_hit[top.index(t) + 1] += 1
    out, hits, n = [], 0, max(1, len(targets))
    for k in range(1, max_k + 1):
        hits += first_hit[k]
        out.append(hits / n)
    return out
