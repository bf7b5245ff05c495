"""The serving shortcuts agree with the plain computation: pruned top k, in-place log-sum-exp,
row chunks, and the short sorted prefix handed to Python."""

from __future__ import annotations

import pytest
import torch

import model.recommenders.neural as neural
from model.nets import SeqRecConfig, build_recommender
from model.nets.base import TOPK_GROUP, TOPK_PRUNE_ROWS, logsumexp_rows_, top_k_rows
from model.recommenders.neural import NeuralRecommender
from model.types import SeqItem
from model.vocab import ItemVocab


@pytest.mark.parametrize("n", [12, 3 * TOPK_GROUP, 50 * TOPK_GROUP + 5, 400 * TOPK_GROUP])
@pytest.mark.parametrize("k", [1, 5, 11, 50])
def test_block_pruned_top_k_equals_torch_topk(n: int, k: int) -> None:
    k = min(k, n)
    g = torch.Generator().manual_seed(n + k)
    x = torch.randn(max(9, TOPK_PRUNE_ROWS), n, generator=g) * 5
    x[:, :2] = float("-inf")
    x[3, : n // 2] = float("-inf")  # a row whose best all sit in the second half
    x[4, -3:] = torch.tensor([100.0, 101.0, 102.0])  # winners in the ragged tail
    values, cols = top_k_rows(x, k)
    want = torch.topk(x, k, 1)
    assert torch.equal(values, want.values)
    assert torch.equal(cols, want.indices)  # random floats: no ties
    assert torch.equal(x.gather(1, cols), values)


def test_in_place_log_sum_exp_equals_torch() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3000, generator=g) * 20
    x[1, :] = float("-inf")  # nothing possible: -inf, not NaN
    x[2, 10:] = float("-inf")
    want = torch.logsumexp(x, 1, keepdim=True)
    got = logsumexp_rows_(x.clone())
    torch.testing.assert_close(got, want)
    assert got[1, 0] == float("-inf")
    # the same with the row maxima given (the top-1 values the serving path already has)
    torch.testing.assert_close(logsumexp_rows_(x.clone(), x.amax(1, keepdim=True)), want)


def _items(n: int) -> list[str]:
    return [f"i{j}" for j in range(n)]


def _recommender(n_items: int = 600) -> NeuralRecommender:
    torch.manual_seed(0)
    vocab = ItemVocab()
    vocab.add_all(_items(n_items))
    net = build_recommender("sasrec", SeqRecConfig(n_items=vocab.size, dim=16, max_len=16))
    return NeuralRecommender(net, vocab)


def _seqs(n: int) -> list[list[SeqItem]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        length = int(torch.randint(1, 30, (1,), generator=g))
        idx = torch.randint(0, 600, (length,), generator=g).tolist()
        out.append([SeqItem(f"i{j}" if j < 590 else f"new{j}", "view", 1000 * t)
                    for t, j in enumerate(idx)])
    return out


def test_row_chunks_rank_like_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = _recommender()
    seqs = _seqs(23)
    exclude = [frozenset({s[-1].item_id, "i3"}) for s in seqs]
    monkeypatch.setattr(neural, "CPU_ROWS", 10_000)
    whole = rec.recommend(seqs, 7, exclude)
    monkeypatch.setattr(neural, "CPU_ROWS", 4)
    chunked = rec.recommend(seqs, 7, exclude)
    assert [[i for i, _ in r] for r in chunked] == [[i for i, _ in r] for r in whole]
    for a, b in zip(chunked, whole, strict=True):
        torch.testing.assert_close([s for _, s in a], [s for _, s in b], rtol=1e-5, atol=1e-5)


def test_rows_short_of_k_in_the_prefix_are_walked_in_full(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Evicted items (free slots) can fill a row's sorted prefix: such a row is walked in
    full, so a prefix of any width ranks like the whole candidate list."""
    rec = _recommender()
    seqs = _seqs(6)
    exclude = [frozenset({s[-1].item_id}) for s in seqs]
    before = rec.recommend(seqs, 12, exclude)
    table = rec.vocab.item_table()
    freed = {i for row in before for i, _ in row[:5]}
    for item in freed:  # free the slots of the items the rows rank first
        table[rec.vocab.id(item)] = None  # type: ignore[index]
    monkeypatch.setattr(neural, "PREFIX_SLACK", 10_000)
    whole = rec.recommend(seqs, 12, exclude)
    walks: list[int] = []
    real_walk = neural._walk

    def counting_walk(*args: object) -> tuple[list[tuple[str, float]], bool]:
        walks.append(len(args[0]))  # type: ignore[arg-type]
        return real_walk(*args)  # type: ignore[arg-type]
    monkeypatch.setattr(neural, "_walk", counting_walk)
    monkeypatch.setattr(neural, "PREFIX_SLACK", 0)
    prefix = rec.recommend(seqs, 12, exclude)
    assert prefix == whole
    assert len(walks) > len(seqs)  # some rows needed the second, full walk
    for row, old in zip(whole, before, strict=True):
        kept = [i for i, _ in old if i not in freed]
        assert [i for i, _ in row][: len(kept)] == kept
