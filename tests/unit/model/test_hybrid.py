"""The hybrid: candidates from counts, the streaming GRU state, and serving with cached states."""

from __future__ import annotations

import pytest
import torch

from model.encoding import encode_sequences
from model.errors import DataError
from model.nets import SeqRecConfig
from model.nets.gru import GRURec
from model.nets.ranker import RankerConfig, RankerNet
from model.recommenders.candidates import COUNT_FEATURES, CandidateConfig, CandidateTables
from model.recommenders.counts import CLASSIC_COVISITATION, covisitation, fit_counts
from model.recommenders.hybrid import HybridRecommender
from model.recommenders.sequence import (
    SeqState,
    SequenceModel,
    state_from_bytes,
    state_to_bytes,
)
from model.serving import ModelPredictor
from model.train.finetune import FineTuneConfig, fine_tune, poll_cases
from model.train.hybrid import HybridConfig, fit_hybrid
from model.train.ranker import RankerTrainConfig
from model.train.sequence import SeqTrainConfig
from model.types import PredictionContext, SeqItem
from model.vocab import ItemVocab

DAY = 86_400_000
# States equal a full re-encode up to float32 rounding of the same GRU arithmetic.
STATE_TOL = 1e-5


def _history(n: int, seed: int = 0, items: int = 12) -> list[SeqItem]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, items, (n,), generator=g).tolist()
    gaps = torch.randint(1, 10 ** 6, (n,), generator=g).tolist()
    types = ["view", "click", "add_to_cart", "purchase"]
    out, ts = [], 1_700_000_000_000
    for j, (i, gap) in enumerate(zip(ids, gaps, strict=True)):
        ts += gap
        out.append(SeqItem(f"i{i}", types[j % 4], ts))
    return out


def _sequence_model(max_len: int = 16) -> SequenceModel:
    torch.manual_seed(0)
    vocab = ItemVocab(100)
    vocab.add_all(f"i{i}" for i in range(12))
    net = GRURec(SeqRecConfig(n_items=vocab.size, dim=16, max_len=max_len, repeat=False))
    return SequenceModel(net, vocab, version="v1")


@pytest.mark.parametrize("length", [1, 5, 16, 40])
def test_incremental_state_equals_full_re_encode(length: int) -> None:
    """One step per event reaches the state a full pass over the whole history gives, however
    long the history (a step costs the same at event 40 as at event 1)."""
    model = _sequence_model()
    hist = _history(length)
    state = model.init_state()
    for e in hist:
        state = model.step(state, *e)
    batch = encode_sequences([hist], model.vocab, max_len=length)
    with torch.inference_mode():
        full = model.net.encode_state(batch)[:, 0]
    torch.testing.assert_close(state.hidden, full, rtol=STATE_TOL, atol=STATE_TOL)
    assert (state.events, state.last_ts_ms, state.version) == (length, hist[-1].ts_ms, "v1")
    # the readout is what the net's own serving path computes after the same events
    with torch.inference_mode():
        last = model.net.encode_last_from(model.net.embed(batch), batch)
    torch.testing.assert_close(model.readout(state.hidden[:, None])[0], last[0],
                               rtol=STATE_TOL, atol=STATE_TOL)


def test_state_survives_a_restart_from_its_bytes() -> None:
    """Half the events, the state to bytes (a changelog), back, the other half: the same."""
    model = _sequence_model()
    hist = _history(30, seed=3)
    straight = model.init_state()
    for e in hist:
        straight = model.step(straight, *e)
    state = model.init_state()
    for e in hist[:13]:
        state = model.step(state, *e)
    state = state_from_bytes(state_to_bytes(state))
    for e in hist[13:]:
        state = model.step(state, *e)
    torch.testing.assert_close(state.hidden, straight.hidden, rtol=STATE_TOL, atol=STATE_TOL)
    assert state_from_bytes(state_to_bytes(state)) .events == 30
    with pytest.raises(DataError):
        state_from_bytes(b"nope")


def test_batched_steps_equal_single_steps() -> None:
    model = _sequence_model()
    a, b = _history(7, seed=1), _history(3, seed=2)
    sa, sb = model.init_state(), model.init_state()
    for e in a[:-1]:
        sa = model.step(sa, *e)
    for e in b[:-1]:
        sb = model.step(sb, *e)
    both = model.step_batch([sa, sb], [a[-1], b[-1]])
    torch.testing.assert_close(both[0].hidden, model.step(sa, *a[-1]).hidden)
    torch.testing.assert_close(both[1].hidden, model.step(sb, *b[-1]).hidden)


def test_the_ranker_serves_the_scores_of_its_training_path() -> None:
    """Serving (eval, no autograd) folds the standardisation into the first layer and runs one
    2-D pass; the scores are those of the plain path, and training still drops out."""
    torch.manual_seed(0)
    ranker = RankerNet(RankerConfig(7))
    ranker.mean.normal_()
    ranker.std.uniform_(0.5, 3.0)
    x = torch.randn(3, 11, 7) * 4
    ranker.eval()
    with torch.no_grad():
        plain = ranker.mlp((x - ranker.mean) / ranker.std).squeeze(-1)
        served = ranker(x)
    torch.testing.assert_close(served, plain, rtol=1e-5, atol=1e-5)
    assert served.shape == (3, 11)
    ranker.train()
    assert ranker(x).requires_grad  # the training path, with dropout and autograd


def test_logits_follow_the_weights_they_were_cached_from() -> None:
    """The item table kept between batches is rebuilt after an in-place weight change (an
    optimiser step) and after the table grows."""
    model = _sequence_model()
    net = model.net
    net.item_cat = torch.arange(model.n_items) % 3  # with categories: the table is a sum
    net.cat_emb = torch.nn.Embedding(3, 16)
    h = torch.randn(2, 16)

    def plain() -> torch.Tensor:
        with torch.no_grad():
            out = torch.addmm(net.item_bias, h, net.item_table().T)
        out[:, :2] = float("-inf")
        return out

    assert torch.equal(model.logits(h), plain())
    with torch.no_grad():
        net.cat_emb.weight.mul_(2.0)
        net.item_emb.weight[5] += 1.0
    assert torch.equal(model.logits(h), plain())
    net.item_cat = torch.zeros(model.n_items, dtype=torch.int64)  # replaced, not edited
    assert torch.equal(model.logits(h), plain())


def test_covisitation_counts_adjacency_days_apart() -> None:
    """Purchases a week apart: the classic 30-minute sessions find no pair, adjacency does,
    the nearer neighbour weighs more, and a pair in one sitting more than one a week apart."""
    users = [[SeqItem("a", "purchase", 0), SeqItem("b", "purchase", 7 * DAY),
              SeqItem("c", "purchase", 14 * DAY)] for _ in range(3)]
    assert covisitation(users, **CLASSIC_COVISITATION) == {}
    nb = dict(covisitation(users)["a"])
    assert nb["b"] > nb["c"] > 0
    close = [[SeqItem("x", "view", 0), SeqItem("y", "view", 60_000)]]
    far = [[SeqItem("x", "view", 0), SeqItem("z", "view", 7 * DAY)]]
    got = dict(covisitation(close + far)["x"])
    assert got["y"] > got["z"] > 0


def _tables(cfg: CandidateConfig = CandidateConfig()) -> CandidateTables:
    users = {"u1": [SeqItem("a", "view", 0), SeqItem("b", "view", 1000),
                    SeqItem("c", "view", 2000)],
             "u2": [SeqItem("a", "view", 0), SeqItem("b", "view", 1000)],
             "u3": [SeqItem("d", "view", 0), SeqItem("e", "view", 1000)]}
    return CandidateTables.from_counts(fit_counts(users, {"a": "k", "d": "k", "e": "m"}), cfg)


def test_candidates_merge_sources_and_never_hold_excluded_items() -> None:
    tables = _tables()
    hist = [SeqItem("c", "add_to_cart", 0), SeqItem("new", "view", 500),
            SeqItem("a", "view", 1000)]
    enc = tables.encode([hist], [frozenset({"a"})])
    cand = tables.generate(enc)
    names = [tables.name(i, enc) for i in cand.ids[0][cand.mask[0]].tolist()]
    assert len(names) == len(set(names))  # one entry per item
    assert "a" not in names  # the trigger
    assert {"c", "new", "b", "d"} <= set(names)  # history, unknown item, neighbour, category
    assert cand.features.shape[2] == len(COUNT_FEATURES)
    feats = cand.features[0][cand.mask[0]]  # (candidates, features) in `names` order
    row = {n: feats[names.index(n)] for n in names}
    col = {f: j for j, f in enumerate(COUNT_FEATURES)}
    assert row["b"][col["covis_sum"]] > 0 and row["b"][col["in_history"]] == 0
    # c is in the history and a neighbour of the trigger: one candidate with both sources
    assert row["c"][col["in_history"]] == 1 and row["c"][col["covis_sum"]] > 0
    assert row["d"][col["category_source"]] > 0


def _hybrid() -> HybridRecommender:
    seq = _sequence_model()
    tables = _tables()
    torch.manual_seed(1)
    ranker = RankerNet(RankerConfig(len(HybridRecommender.feature_names(True)), hidden=8))
    return HybridRecommender(tables, ranker, seq, top_k=5)


def _context(hist: list[SeqItem], state: bytes | None, user: str = "u") -> PredictionContext:
    e = hist[-1]
    return PredictionContext(user_id=user, event_id=f"e{len(hist)}", item_id=e.item_id,
                             event_type=e.event_type, ts_ms=e.ts_ms, category=None,
                             sequence=tuple(hist), features={}, k=5, seq_state=state)


def test_predictor_advances_cached_states_and_ranks_as_without_them() -> None:
    """The stream keeps the state a prediction returns and sends it with the next event: one
    step per event, the same items as re-encoding the history, the version in the state."""
    rec = _hybrid()
    pred = ModelPredictor(rec, None, version="v1", risk_version=None)
    try:
        hist = _history(12, seed=5)
        state: bytes | None = b""
        for n in range(1, len(hist) + 1):
            got = pred.compute([_context(hist[:n], state)])[0]
            plain = pred.compute([_context(hist[:n], None)])[0]
            assert plain.seq_state is None
            assert got.seq_state is not None
            state = got.seq_state
            assert [i.item_id for i in got.items] == [i.item_id for i in plain.items]
            torch.testing.assert_close([i.score for i in got.items],
                                       [i.score for i in plain.items], rtol=1e-4, atol=1e-4)
        kept = state_from_bytes(state)
        assert kept.version == "v1" and kept.events == len(hist)
    finally:
        pred.close()


def test_later_events_of_a_user_in_one_call_step_from_the_state_before_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch with four events of one user and one of another (the worker sends the stored
    state with a user's first event, b"" with the later ones): each later event steps from
    the state the call computed for the event before it; no history is re-encoded."""
    rec = _hybrid()
    assert rec.seq is not None
    hist, other = _history(10, seed=3), _history(4, seed=4)
    stored = state_to_bytes(rec.seq.states_of([hist[:6]])[0])
    pred = ModelPredictor(rec, None, version="v1", risk_version=None)
    encoded: list[int] = []
    real_encode = rec.seq.encode
    monkeypatch.setattr(rec.seq, "encode", lambda seqs: encoded.append(len(seqs))
                        or real_encode(seqs))
    try:
        ctxs = [_context(hist[:7], stored), _context(other, b"", "v"), _context(hist[:8], b""),
                _context(hist[:9], b""), _context(hist[:10], b"")]
        got = pred.compute(ctxs)
    finally:
        pred.close()
    assert encoded == [1]  # the other user's first state only
    for n, p in zip((7, 8, 9, 10), (got[0], got[2], got[3], got[4]), strict=True):
        assert p.seq_state is not None
        kept = state_from_bytes(p.seq_state)
        full = rec.seq.states_of([hist[:n]])[0]
        torch.testing.assert_close(kept.hidden, full.hidden, rtol=STATE_TOL, atol=STATE_TOL)
        assert kept.last_ts_ms == hist[n - 1].ts_ms


def test_a_first_event_steps_from_the_initial_state_without_a_re_encode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's first event (a one-event history, no state) gets the state a re-encode gives,
    by one step: new users are most of a stream's first hours."""
    rec = _hybrid()
    assert rec.seq is not None
    firsts = [_history(1, seed=s) for s in range(5)]
    want = rec.seq.states_of(firsts)
    monkeypatch.setattr(rec.seq, "encode", lambda seqs: pytest.fail("re-encoded"))
    got = rec.advance(firsts, [None, b"", b"junk", None, b""])
    for g, w, hist in zip(got, want, firsts, strict=True):
        torch.testing.assert_close(g.hidden, w.hidden, rtol=STATE_TOL, atol=STATE_TOL)
        assert (g.last_ts_ms, g.events, g.version) == (hist[0].ts_ms, 1, "v1")


def test_a_state_of_another_version_is_re_encoded() -> None:
    rec = _hybrid()
    hist = _history(6, seed=9)
    assert rec.seq is not None
    fresh = rec.seq.states_of([hist])[0]
    stale = SeqState(torch.ones_like(fresh.hidden), hist[-2].ts_ms, 5, "v0")
    got = rec.advance([hist], [state_to_bytes(stale)])[0]
    torch.testing.assert_close(got.hidden, fresh.hidden)
    assert got.version == "v1"
    # unreadable bytes, an empty blob and a state newer than the trigger: re-encoded too
    newer = stale._replace(version="v1", last_ts_ms=hist[-1].ts_ms + 1)
    for blob in (b"junk", b"", state_to_bytes(newer)):
        torch.testing.assert_close(rec.advance([hist], [blob])[0].hidden, fresh.hidden)


def test_a_state_that_missed_events_is_re_encoded_not_stepped() -> None:
    """A state of this version that ended three events before the trigger (events served by
    another model meanwhile): stepping it would skip two events, so it is re-encoded."""
    rec = _hybrid()
    hist = _history(8, seed=11)
    assert rec.seq is not None
    behind = rec.seq.states_of([hist[:5]])[0]
    got = rec.advance([hist], [state_to_bytes(behind)])[0]
    torch.testing.assert_close(got.hidden, rec.seq.states_of([hist])[0].hidden)
    assert got.events == 8
    # one event behind: stepped (a step gives what the full pass gives)
    last = rec.seq.states_of([hist[:7]])[0]
    stepped = rec.advance([hist], [state_to_bytes(last)])[0]
    torch.testing.assert_close(stepped.hidden, got.hidden, rtol=STATE_TOL, atol=STATE_TOL)


def _ring(users: int, length: int, shift: int = 1, t0: int = 0) -> dict[str, list[SeqItem]]:
    """Users walk a ring of 25 items `shift` steps at a time."""
    return {f"u{u}": [SeqItem(f"i{(u + shift * j) % 25}", "view", t0 + 60_000 * j + u)
                      for j in range(length)] for u in range(users)}


def test_fine_tune_scores_each_poll_before_learning_from_it() -> None:
    """A stream that changes its habit (two steps around the ring, then a new item): the
    poll is scored before the model learns from it, and the next poll scores higher."""
    train = _ring(40, 30)
    cfg = HybridConfig(ranker=RankerTrainConfig(epochs=5), ranker_cases=400)
    fit = fit_hybrid(train, {}, cfg, SeqTrainConfig(dim=16, max_len=8, epochs=3, budget_s=20))
    rec = fit.build(train, {}, cfg)[0]
    assert rec.seq is not None
    n_vocab = len(rec.seq.vocab)
    hist = {u: s[-5:] for u, s in _ring(40, 30).items()}
    polls = []
    for p in range(4):
        new = _ring(40, 6, shift=2, t0=10 ** 9 + p * 10 ** 7)
        new["u0"].append(SeqItem("brand-new", "view", 2 * 10 ** 9))
        users = {u: hist[u] + new[u] for u in hist}
        assert len(poll_cases(users, {u: len(hist[u]) for u in hist}, 8)) >= 40 * 5
        polls.append(fine_tune(rec, users, {u: len(hist[u]) for u in hist},
                               FineTuneConfig(epochs=3, lr=5e-3, ranker_lr=5e-3)))
        hist = {u: s[-5:] for u, s in users.items()}
    assert all(r.ranker_loss is not None and r.sequence_loss is not None for r in polls)
    assert polls[0].new_items == 1 and len(rec.seq.vocab) == n_vocab + 1
    assert polls[-1].prequential["hr@20"] >= polls[0].prequential["hr@20"]
    assert polls[-1].prequential["mrr@20"] > polls[0].prequential["mrr@20"]
    # the grown model still serves, the new item among what it can name
    out = rec.recommend([users["u1"]], 5, [frozenset()])[0]
    assert len(out) == 5
