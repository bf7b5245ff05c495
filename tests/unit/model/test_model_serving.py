"""load_predictor: baseline on an empty registry, trained models through the batcher."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from model.errors import RegistryError
from model.nets import RiskConfig, RiskNet, SeqRecConfig, build_recommender
from model.nets.gru import GRURec
from model.nets.ranker import RankerConfig, RankerNet
from model.predictor import Predictor
from model.recommenders.baseline import BaselinePredictor
from model.recommenders.candidates import CandidateTables
from model.recommenders.counts import fit_counts
from model.recommenders.hybrid import HybridRecommender
from model.recommenders.neighbors import CoVisitationRecommender, PopularityRecommender
from model.recommenders.neural import NeuralRecommender
from model.recommenders.sequence import SequenceModel, state_from_bytes
from model.registry import ModelRegistry
from model.risk.model import RiskScorer
from model.serving import ModelPredictor, load_predictor
from model.types import FEATURE_NAMES, PredictionContext, SeqItem
from model.vocab import ItemVocab

ITEMS = [f"p{i}" for i in range(40)]


def _train_seqs() -> list[list[SeqItem]]:
    return [[SeqItem(ITEMS[(u + j) % 40], "view", j * 60_000) for j in range(10)]
            for u in range(30)]


def _publish(reg: ModelRegistry, served: str, tag: int = 0) -> str:
    torch.manual_seed(tag)
    vocab = ItemVocab()
    vocab.add_all(ITEMS)
    net = build_recommender("sasrec", SeqRecConfig(n_items=vocab.size, dim=16, max_len=16))
    models = {"sasrec": NeuralRecommender(net, vocab),
              "covisitation": CoVisitationRecommender.fit(_train_seqs()),
              "popularity": PopularityRecommender.fit(_train_seqs())}

    def write(d: Path) -> None:
        for m, r in models.items():
            r.save(d / m)
    return reg.publish("recommender", write,
                       metadata={"served": served, "methods": sorted(models)})


def _publish_risk(reg: ModelRegistry) -> str:
    torch.manual_seed(0)
    net = RiskNet(RiskConfig(dim=8, seq_dim=4, max_len=8))
    net.fit_scaler(torch.rand(50, len(FEATURE_NAMES)) * 10)
    return reg.publish("risk", RiskScorer(net).save)


def _ctx(i: int, **kw: object) -> PredictionContext:
    seq = tuple(SeqItem(ITEMS[(i + j) % 40], "view", 1000 * j) for j in range(6))
    base: dict[str, object] = dict(
        user_id=f"u{i}", event_id=f"e{i}", item_id=seq[-1].item_id, event_type="view",
        ts_ms=seq[-1].ts_ms, category=None, sequence=seq,
        features={"price": 5.0 * i, "gap_s": 3.0, "count_view_1m": 2.0})
    base.update(kw)
    return PredictionContext(**base)  # type: ignore[arg-type]


def test_empty_registry_serves_the_baseline(tmp_path: Path) -> None:
    p = load_predictor(tmp_path)
    assert isinstance(p, BaselinePredictor) and isinstance(p, Predictor)
    assert isinstance(load_predictor(tmp_path, prefer="baseline"), BaselinePredictor)


@pytest.mark.parametrize("served", ["sasrec", "covisitation"])
def test_serves_latest_version_with_contract(tmp_path: Path, served: str) -> None:
    reg = ModelRegistry(tmp_path)
    _publish(reg, "popularity")
    v = _publish(reg, served, tag=1)
    rv = _publish_risk(reg)
    p = load_predictor(tmp_path, device="cpu")
    assert isinstance(p, ModelPredictor) and isinstance(p, Predictor)
    try:
        assert (p.name, p.version) == (served, v)
        ctxs = [_ctx(0), _ctx(1, k=3, exclude_items=frozenset({"p3", "p4"})),
                _ctx(2, recommend=False)]
        out = p.predict_batch(ctxs)
        assert len(out) == 3
        assert all(o.model == served and o.model_version == v and o.risk_model_version == rv
                   for o in out)
        assert 0 < len(out[0].items) <= 10 and len(out[1].items) == 3
        assert out[2].items == ()
        for o, c in zip(out, ctxs, strict=True):
            ids = {s.item_id for s in o.items}
            assert c.item_id not in ids and not ids & c.exclude_items
            assert all(s.propensity == 1.0 for s in o.items)
            assert 0.0 < o.risk.score < 1.0
            assert all(r.feature in FEATURE_NAMES and r.contribution > 0 for r in o.risk.reasons)
        # the batched path gives what a direct batch-of-one call gives
        assert p.predict_batch([ctxs[1]])[0].items == p.compute([ctxs[1]])[0].items
    finally:
        p.close()


def test_prefer_picks_a_method_and_rejects_missing_ones(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    _publish(reg, "covisitation")
    p = load_predictor(tmp_path, prefer="sasrec")
    assert isinstance(p, ModelPredictor) and p.name == "sasrec"
    assert p.risk_version == "rules-v1"  # no risk model published: rule score
    assert 0.0 <= p.predict_batch([_ctx(0)])[0].risk.score <= 1.0
    p.close()
    with pytest.raises(RegistryError, match="gru"):
        load_predictor(tmp_path, prefer="gru")
    with pytest.raises(ValueError):
        load_predictor(tmp_path, prefer="nonsense")


def test_new_version_loads_while_old_one_serves(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v1 = _publish(reg, "sasrec")
    old = load_predictor(tmp_path)
    assert isinstance(old, ModelPredictor)
    results: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            results.extend(o.model_version for o in old.predict_batch([_ctx(1), _ctx(2)]))
    t = threading.Thread(target=serve)
    t.start()
    v2 = _publish(reg, "sasrec", tag=2)
    new = load_predictor(tmp_path)
    stop.set()
    t.join()
    old.close()
    assert isinstance(new, ModelPredictor) and new.version == v2 != v1
    assert results and set(results) == {v1}
    assert new.predict_batch([_ctx(3)])[0].model_version == v2
    new.close()


def test_a_batch_is_computed_in_the_callers_thread_in_passes_of_max_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """predict_batch runs the passes itself (no hand-off to the batcher's thread), at most
    max_batch rows each, with the answers the batcher gives one request at a time."""
    _publish(ModelRegistry(tmp_path), "sasrec")
    pred = load_predictor(tmp_path, max_batch=4)
    assert isinstance(pred, ModelPredictor)
    contexts = [_ctx(i) for i in range(10)]
    one_by_one = [pred.predict_one(c) for c in contexts]
    passes: list[tuple[str, int]] = []
    compute = pred.compute

    def recorded(rows: list[PredictionContext]) -> list[object]:
        passes.append((threading.current_thread().name, len(rows)))
        return compute(rows)  # type: ignore[return-value]
    monkeypatch.setattr(pred, "compute", recorded)
    batch = pred.predict_batch(contexts)
    pred.close()
    me = threading.current_thread().name
    assert passes == [(me, 4), (me, 4), (me, 2)]
    for got, alone in zip(batch, one_by_one, strict=True):  # batch sizes round differently
        assert [i.item_id for i in got.items] == [i.item_id for i in alone.items]
        assert [i.score for i in got.items] == pytest.approx([i.score for i in alone.items],
                                                             abs=1e-5)


def test_the_rule_risk_beside_a_model_learns_the_spend_z_score_as_the_baseline_does(
        tmp_path: Path) -> None:
    """No risk net published: the rule risk serves, and its spend velocity rule reads the
    spend of the purchases scored so far (it stayed at zero, so a burst of spend went
    unnoticed by a worker serving a trained recommender)."""
    _publish(ModelRegistry(tmp_path), "sasrec")
    pred = load_predictor(tmp_path)
    baseline = BaselinePredictor()
    assert isinstance(pred, ModelPredictor) and pred.risk_version == "rules-v1"
    usual = [_ctx(i, event_type="purchase", features={"spend_1h": 40.0 + i % 7})
             for i in range(30)]
    pred.predict_batch(usual)
    baseline.predict_batch(usual)
    burst = _ctx(99, event_type="purchase", features={"spend_1h": 900.0})
    got, want = pred.predict_batch([burst])[0].risk, baseline.predict_batch([burst])[0].risk
    pred.close()
    assert "spend_z_1h" in [r.feature for r in got.reasons]
    assert got == want


def test_a_published_hybrid_serves_and_its_states_name_the_version(tmp_path: Path) -> None:
    """`train recommender` publishes the hybrid beside the other methods; served, it keeps
    sequence states stamped with the registry version, and a state of an older version is
    re-encoded (after a hot swap) rather than read with the wrong weights."""
    torch.manual_seed(0)
    users = {str(u): s for u, s in enumerate(_train_seqs())}
    vocab = ItemVocab()
    vocab.add_all(ITEMS)
    seq = SequenceModel(GRURec(SeqRecConfig(n_items=vocab.size, dim=16, repeat=False)), vocab)
    ranker = RankerNet(RankerConfig(len(HybridRecommender.feature_names(True)), hidden=8))
    rec = HybridRecommender(CandidateTables.from_counts(fit_counts(users, {})), ranker, seq)
    reg = ModelRegistry(tmp_path)
    v1 = reg.publish("recommender", lambda d: rec.save(d / "hybrid"),
                     metadata={"served": "hybrid", "methods": ["hybrid"]})
    v2 = reg.publish("recommender", lambda d: rec.save(d / "hybrid"),
                     metadata={"served": "hybrid", "methods": ["hybrid"]})
    old = load_predictor(tmp_path, device="cpu", recommender_version=v1)
    new = load_predictor(tmp_path, device="cpu")
    try:
        assert isinstance(new, ModelPredictor) and new.name == "hybrid" and new.version == v2
        first = old.predict_batch([_ctx(1, seq_state=b"")])[0]
        assert first.seq_state is not None and state_from_bytes(first.seq_state).version == v1
        assert len(first.items) == 10
        swapped = new.predict_batch([_ctx(1, seq_state=first.seq_state)])[0]
        fresh = new.predict_batch([_ctx(1, seq_state=b"")])[0]
        assert swapped.seq_state is not None
        assert state_from_bytes(swapped.seq_state).version == v2
        assert swapped.seq_state == fresh.seq_state  # re-encoded, not stepped from v1's state
        assert new.predict_batch([_ctx(1)])[0].seq_state is None  # no state asked, none kept
    finally:
        for p in (old, new):
            if isinstance(p, ModelPredictor):
                p.close()
