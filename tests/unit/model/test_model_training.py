"""Training loss: the target-only mixture equals the full mixture at the target."""

from __future__ import annotations

import pytest
import torch

from model.encoding import SeqBatch, encode_rows
from model.nets import SeqRecConfig, SeqRecNet, build_recommender
from model.train.neural import sampled_loss
from model.vocab import RESERVED


def _reference_loss(net: SeqRecNet, batch: SeqBatch, targets: torch.Tensor, negatives: int,
                    n_items: int) -> torch.Tensor:
    """The straightforward version: the whole (N, C) mixture, then the target's column."""
    h, x = net.encode(batch)
    pos = (targets >= 0).nonzero(as_tuple=True)
    rand = torch.randint(RESERVED, n_items, (negatives,))
    cand, inverse = torch.unique(torch.cat([batch.items.reshape(-1), targets[pos], rand]),
                                 return_inverse=True)
    n_hist = batch.items.numel()
    hist_c = inverse[:n_hist].view_as(batch.items)
    tgt_c = inverse[n_hist: n_hist + len(pos[0])]
    hq, cur = h[pos], batch.items[pos]
    explore = hq @ net.item_emb(cand).T + net.item_bias[cand]
    explore = explore.masked_fill((cand < RESERVED)[None, :] | (cand[None, :] == cur[:, None]),
                                  float("-inf"))
    copy = net.copy_scores(hq.unsqueeze(1), x[pos[0]], pos[1][:, None]).squeeze(1)
    steps = torch.arange(h.shape[1])
    valid = (steps[None, :] <= pos[1][:, None]) & (batch.items[pos[0]] != cur[:, None])
    logp = net.mixture(hq, explore, copy, valid, hist_c[pos[0]])
    out: torch.Tensor = -logp.gather(1, tgt_c[:, None]).mean()
    return out


@pytest.mark.parametrize("kind", ["gru", "sasrec"])
@pytest.mark.parametrize("repeat", [True, False])
def test_sampled_loss_equals_full_mixture_at_the_target(kind: str, repeat: bool) -> None:
    torch.manual_seed(0)
    n_items = 400
    net = build_recommender(kind, SeqRecConfig(n_items=n_items, dim=16, layers=1, heads=1,
                                                max_len=12, dropout=0.0, repeat=repeat))
    torch.nn.init.normal_(net.copy_age.weight)  # starts at zero: make it matter
    g = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(8):
        length = int(torch.randint(2, 13, (1,), generator=g))
        # few distinct items, so sequences repeat items and the copy part matters
        rows.append([(int(i), 1, 2) for i in torch.randint(RESERVED, 12, (length,), generator=g)])
    batch = encode_rows([r[:-1] for r in rows], 12)
    n = batch.items.shape[1]
    targets = torch.full((len(rows), n), -100, dtype=torch.int64)
    for i, r in enumerate(rows):
        t = torch.tensor([x[0] for x in r[1:]])[:n]
        targets[i, : len(t)] = t
    targets[(targets < RESERVED) | (targets == batch.items)] = -100
    torch.manual_seed(5)
    fast = sampled_loss(net, batch, targets, 64, n_items)
    torch.manual_seed(5)
    ref = _reference_loss(net, batch, targets, 64, n_items)
    torch.testing.assert_close(fast, ref)
    params = [p for p in net.parameters() if p.requires_grad]
    g_fast = torch.autograd.grad(fast, params, allow_unused=True, retain_graph=True)
    g_ref = torch.autograd.grad(ref, params, allow_unused=True)
    for a, b in zip(g_fast, g_ref, strict=True):
        if a is not None and b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
