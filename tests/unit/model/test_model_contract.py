"""The contract every model class passes: nets, the risk net, every Recommender and every
Predictor (model.testing.check_predictor, the rules a user's own model is checked against)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from model.device import resolve_device
from model.encoding import SeqBatch, encode_sequences
from model.nets import RiskConfig, RiskNet, SeqRecConfig, SeqRecNet, build_recommender
from model.nets.gru import GRURec
from model.nets.ranker import RankerConfig, RankerNet
from model.predictor import Predictor
from model.recommenders.base import Recommender
from model.recommenders.baseline import BaselinePredictor
from model.recommenders.candidates import CandidateTables
from model.recommenders.counts import fit_counts
from model.recommenders.hybrid import HybridRecommender
from model.recommenders.loading import load_recommender
from model.recommenders.neighbors import CoVisitationRecommender, PopularityRecommender
from model.recommenders.neural import NeuralRecommender
from model.recommenders.sequence import SequenceModel
from model.testing import CONTRACT_RULES, FakePredictor, check_predictor
from model.types import FEATURE_NAMES, Prediction, PredictionContext, ScoredItem, SeqItem
from model.vocab import ItemVocab

ITEMS = [f"i{n}" for n in range(30)]


def _vocab() -> ItemVocab:
    v = ItemVocab(capacity=1000)
    v.add_all(ITEMS)
    return v


def _seqs() -> list[list[SeqItem]]:
    g = torch.Generator().manual_seed(7)
    types = ["view", "click", "add_to_cart", "purchase"]
    out = []
    for length in (1, 3, 9, 20, 60):  # different padded lengths, one longer than max_len
        idx = torch.randint(0, len(ITEMS), (length,), generator=g).tolist()
        ty = torch.randint(0, 4, (length,), generator=g).tolist()
        out.append([SeqItem(ITEMS[i], types[t], 1_000 * 17 ** (j % 5) + j * 60_000)
                    for j, (i, t) in enumerate(zip(idx, ty, strict=True))])
    return out


@dataclass
class NetCase:
    name: str
    build: Callable[[], torch.nn.Module]
    run: Callable[[torch.nn.Module, list[list[SeqItem]], torch.device], torch.Tensor]
    grows: bool


def _batch(seqs: list[list[SeqItem]], device: torch.device) -> SeqBatch:
    return encode_sequences(seqs, _vocab(), 16).to(device)


def _rec_case(kind: str) -> NetCase:
    def build() -> torch.nn.Module:
        net = build_recommender(kind, SeqRecConfig(n_items=_vocab().size, dim=16, layers=2,
                                                   heads=2, max_len=16, dropout=0.1))
        return _random_age_bias(net)

    def run(m: torch.nn.Module, seqs: list[list[SeqItem]], dev: torch.device) -> torch.Tensor:
        out: torch.Tensor = m.logits_last(_batch(seqs, dev))  # type: ignore[operator]
        return out
    return NetCase(kind, build, run, True)


def _risk_case() -> NetCase:
    def build() -> torch.nn.Module:
        net = RiskNet(RiskConfig(dim=8, seq_dim=4, max_len=16))
        net.fit_scaler(torch.rand(20, len(FEATURE_NAMES)) * 100)
        net.set_calibration(1.3, -0.2)
        return net

    def run(m: torch.nn.Module, seqs: list[list[SeqItem]], dev: torch.device) -> torch.Tensor:
        g = torch.Generator().manual_seed(3)
        x = torch.rand(len(_seqs()), len(FEATURE_NAMES), generator=g) * 50
        x = x[[_seqs().index(s) for s in seqs]]
        prob, contrib = m.attribute(x.to(dev), _batch(seqs, dev))  # type: ignore[operator]
        return torch.cat([prob[:, None], contrib], 1)
    return NetCase("risk", build, run, False)


def _ranker_case() -> NetCase:
    """The hybrid's ranker over its real inputs, as one score per table item (candidates
    only; -1e9 elsewhere), so rows of different candidate counts compare."""
    def build() -> torch.nn.Module:
        names = HybridRecommender.feature_names(True)
        net = RankerNet(RankerConfig(len(names), hidden=8))
        net.mean.normal_()
        return net

    def run(m: torch.nn.Module, seqs: list[list[SeqItem]], dev: torch.device) -> torch.Tensor:
        rec = _hybrid(True)
        b = rec.batch(seqs, [frozenset({s[-1].item_id}) for s in seqs])
        s = m(b.x.to(dev)).cpu().masked_fill(~b.cand.mask, -1e9)  # type: ignore[operator]
        out = torch.full((len(seqs), rec.tables.n + 8), -1e9)
        return out.scatter(1, b.cand.ids, s)
    return NetCase("ranker", build, run, False)


NET_CASES = [_rec_case("sasrec"), _rec_case("gru"), _risk_case(), _ranker_case()]


def _fresh(case: NetCase, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return case.build().eval()


@pytest.mark.parametrize("case", NET_CASES, ids=lambda c: c.name)
class TestNetContract:
    def test_shapes_and_finite(self, case: NetCase) -> None:
        out = case.run(_fresh(case), _seqs(), torch.device("cpu"))
        assert out.shape[0] == len(_seqs())
        assert not torch.isnan(out).any()
        if case.grows:  # log-probabilities over the item table: they sum to one
            assert out.shape[1] == _vocab().size
            torch.testing.assert_close(out.exp().sum(1), torch.ones(out.shape[0]))
            assert (out[:, :2] < -50).all()  # padding and unknown: probability ~ 0
        elif case.name == "ranker":
            assert ((out > -1e9).sum(1) > 0).all()  # every row has candidates
        else:
            assert out.shape[1] == 1 + len(FEATURE_NAMES)
            assert ((out[:, 0] > 0) & (out[:, 0] < 1)).all()
            assert torch.isfinite(out).all()

    def test_deterministic_under_seed(self, case: NetCase) -> None:
        a = case.run(_fresh(case, 1), _seqs(), torch.device("cpu"))
        b = case.run(_fresh(case, 1), _seqs(), torch.device("cpu"))
        c = case.run(_fresh(case, 2), _seqs(), torch.device("cpu"))
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)

    def test_save_load_round_trip(self, case: NetCase, tmp_path: Path) -> None:
        m = _fresh(case, 1)
        torch.save(m.state_dict(), tmp_path / "w.pt")
        m2 = _fresh(case, 99)
        m2.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
        assert torch.equal(case.run(m, _seqs(), torch.device("cpu")),
                           case.run(m2.eval(), _seqs(), torch.device("cpu")))

    def test_batch_of_one_equals_row_of_batch(self, case: NetCase) -> None:
        m = _fresh(case)
        full = case.run(m, _seqs(), torch.device("cpu"))
        for i, s in enumerate(_seqs()):
            one = case.run(m, [s], torch.device("cpu"))
            torch.testing.assert_close(one[0], full[i], rtol=1e-4, atol=1e-4)

    def test_cpu_fallback(self, case: NetCase) -> None:
        dev = resolve_device("auto")
        m = _fresh(case)
        cpu = case.run(m, _seqs(), torch.device("cpu"))
        other = case.run(m.to(dev), _seqs(), dev).cpu()
        torch.testing.assert_close(other, cpu, rtol=1e-3, atol=1e-3)
        if not torch.cuda.is_available():
            assert resolve_device("cuda") == torch.device("cpu")


@pytest.mark.parametrize("case", [c for c in NET_CASES if c.grows], ids=lambda c: c.name)
def test_growing_vocabulary_keeps_old_ids(case: NetCase) -> None:
    m = _fresh(case)
    before = case.run(m, _seqs(), torch.device("cpu"))
    v = _vocab()
    old = {i: v.id(i) for i in ITEMS}
    v.add_all(["new1", "new2", "new3"])
    assert {i: v.id(i) for i in ITEMS} == old
    m.grow_items(v.size)  # type: ignore[operator]
    after = case.run(m, _seqs(), torch.device("cpu"))
    assert after.shape[1] == before.shape[1] + 3
    torch.testing.assert_close(after[:, : before.shape[1]], before)


def _train_seqs() -> list[list[SeqItem]]:
    return _seqs() + [[SeqItem(ITEMS[j % 7], "view", j * 1000) for j in range(12)]]


def _random_age_bias(net: SeqRecNet) -> SeqRecNet:
    """The copy head's age bias starts at zero; random values make every path that must
    agree on event ages (training, full, last-position, top-k) show it if they do not."""
    torch.nn.init.normal_(net.copy_age.weight, std=1.0)
    return net


def _neural(kind: str) -> Recommender:
    torch.manual_seed(0)
    net = build_recommender(kind, SeqRecConfig(n_items=_vocab().size, dim=16, max_len=16))
    return NeuralRecommender(_random_age_bias(net), _vocab())


def _hybrid(with_sequence: bool) -> HybridRecommender:
    """Tables counted from the training sequences, a seeded random ranker (and GRU)."""
    torch.manual_seed(0)
    users = {str(i): s for i, s in enumerate(_train_seqs())}
    tables = CandidateTables.from_counts(fit_counts(users, {"i1": "c1", "i2": "c1", "i3": "c2"}))
    names = HybridRecommender.feature_names(with_sequence)
    ranker = RankerNet(RankerConfig(len(names), hidden=8))
    seq = None
    if with_sequence:
        net = GRURec(SeqRecConfig(n_items=_vocab().size, dim=16, max_len=16, repeat=False))
        seq = SequenceModel(net, _vocab())
    return HybridRecommender(tables, ranker, seq, top_k=5)


REC_FACTORIES: dict[str, Callable[[], Recommender]] = {
    "popularity": lambda: PopularityRecommender.fit(_train_seqs()),
    "covisitation": lambda: CoVisitationRecommender.fit(_train_seqs()),
    "gru": lambda: _neural("gru"),
    "sasrec": lambda: _neural("sasrec"),
    "hybrid": lambda: _hybrid(True),
    "hybrid_without_sequence": lambda: _hybrid(False),
}


@pytest.mark.parametrize("method", sorted(REC_FACTORIES))
def test_recommender_contract(method: str, tmp_path: Path) -> None:
    rec = REC_FACTORIES[method]()
    assert rec.method == method
    seqs = _seqs()
    exclude = [frozenset({s[-1].item_id, "i0"}) for s in seqs]
    out = rec.recommend(seqs, 5, exclude)
    assert len(out) == len(seqs)
    for row, ex in zip(out, exclude, strict=True):
        assert 0 < len(row) <= 5
        items = [i for i, _ in row]
        assert len(set(items)) == len(items)
        assert not set(items) & ex
        scores = [s for _, s in row]
        assert scores == sorted(scores, reverse=True)
    rec.save(tmp_path / method)
    again = load_recommender(tmp_path / method, method)
    assert again.recommend(seqs, 5, exclude) == out
    # one row alone ranks the same as inside the batch
    for i in range(len(seqs)):
        alone = rec.recommend([seqs[i]], 5, [exclude[i]])[0]
        assert [x for x, _ in alone] == [x for x, _ in out[i]]


@pytest.mark.parametrize("case", [c for c in NET_CASES if c.grows], ids=lambda c: c.name)
def test_serving_path_matches_training_path(case: NetCase) -> None:
    """logits_last (the cheap serving path) equals logits_all at each row's last event."""
    m = _fresh(case)
    batch = _batch(_seqs(), torch.device("cpu"))
    with torch.no_grad():
        full = m.logits_all(batch)  # type: ignore[operator]
        last = m.logits_last(batch)  # type: ignore[operator]
    idx = batch.lengths - 1
    torch.testing.assert_close(last, full[torch.arange(len(idx)), idx], rtol=1e-4, atol=1e-4)


def test_unknown_history_items_can_still_be_recommended() -> None:
    """An item the table never saw but the user met is re-consumable through the copy head."""
    rec = _neural("sasrec")
    assert isinstance(rec, NeuralRecommender)
    seq = [SeqItem("brand-new", "add_to_cart", 0), SeqItem("i1", "view", 1000),
           SeqItem("i2", "view", 2000)]
    out = rec.recommend([seq], 40, [frozenset({"i2"})])[0]
    assert "brand-new" in [i for i, _ in out]
    assert all(i != "i2" for i, _ in out)


@pytest.mark.parametrize("kind", ["sasrec", "gru"])
def test_fast_top_k_equals_full_table_ranking(kind: str) -> None:
    """recommend() scores only the possible winners; it must agree with the full softmax."""
    rec = _neural(kind)
    assert isinstance(rec, NeuralRecommender)
    seqs = _seqs() + [[SeqItem("unseen", "view", 0), SeqItem("i3", "view", 5000)]]
    exclude = [frozenset({s[-1].item_id, "i5"}) for s in seqs]
    fast = rec.recommend(seqs, 8, exclude)
    full, unknown = rec.logits(seqs)
    names = [rec.vocab.item(i) for i in range(rec.vocab.size)] + unknown
    for row, ex, got in zip(full, exclude, fast, strict=True):
        ranked = [(names[i], float(row[i])) for i in row.argsort(descending=True).tolist()
                  if names[i] is not None and names[i] not in ex and row[i] > -60][:8]
        assert [i for i, _ in got] == [i for i, _ in ranked]
        torch.testing.assert_close([s for _, s in got], [s for _, s in ranked],
                                   rtol=1e-4, atol=1e-4)


# --- the Predictor contract (model.testing.check_predictor): what the worker relies on ------

def _model_predictor(method: str) -> Predictor:
    from model.serving import ModelPredictor

    return ModelPredictor(REC_FACTORIES[method](), None, version="v1", risk_version=None)


def _exploring() -> Predictor:
    from model.policy.exploration import ExplorationPredictor
    from model.policy.policies import make_policy

    return ExplorationPredictor(FakePredictor(), make_policy("epsilon_greedy"), pool=10)


PREDICTORS: dict[str, Callable[[], Predictor]] = {
    "fake": FakePredictor,
    "baseline": BaselinePredictor,
    "exploring": _exploring,
    **{f"served-{m}": (lambda m=m: _model_predictor(m))  # type: ignore[misc]
       for m in ("popularity", "covisitation", "gru", "sasrec", "hybrid")},
}


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_every_predictor_passes_the_predictor_contract(name: str) -> None:
    predictor = PREDICTORS[name]()
    try:
        assert check_predictor(predictor) == []
    finally:
        close = getattr(predictor, "close", None)
        if callable(close):
            close()


class _LearnFails(FakePredictor):
    def learn_batch(self, contexts: Sequence[PredictionContext]) -> None:
        raise RuntimeError("no online learning here")


class _Broken(FakePredictor):
    """A FakePredictor whose answers `mutate` spoils, to show each rule can fail."""

    def __init__(self, mutate: Callable[[_Broken, list[Prediction]], list[Prediction]],
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.mutate = mutate
        self.calls = 0

    def predict_batch(self, contexts: Sequence[PredictionContext]) -> list[Prediction]:
        self.calls += 1
        return self.mutate(self, super().predict_batch(contexts))


def _each(fn: Callable[[Prediction], None]) -> Callable[[_Broken, list[Prediction]],
                                                          list[Prediction]]:
    def mutate(_: _Broken, preds: list[Prediction]) -> list[Prediction]:
        for p in preds:
            fn(p)
        return preds
    return mutate


def _set(**values: Any) -> Callable[[Prediction], None]:
    def fn(p: Prediction) -> None:
        for k, v in values.items():
            setattr(p, k, v)
    return fn


def _items(fn: Callable[[tuple[ScoredItem, ...]], tuple[ScoredItem, ...]]
           ) -> Callable[[Prediction], None]:
    def apply(p: Prediction) -> None:
        if p.items:
            p.items = fn(p.items)
    return apply


BROKEN: dict[str, Callable[[], object]] = {
    "protocol": lambda: object(),
    "identity": lambda: FakePredictor(version=""),
    "answers": lambda: _Broken(lambda _, ps: ps[:-1] if ps else ps),
    "labels": lambda: _Broken(_each(_set(model="someone-else"))),
    "k": lambda: _Broken(_each(_items(lambda it: it + (ScoredItem("extra-item", -1.0),) * 40))),
    "exclusions": lambda: _Broken(_each(_items(lambda it: (ScoredItem("item-0", 9.0),
                                                           *it)))),
    "unique": lambda: _Broken(_each(_items(lambda it: (it[0], *it)))),
    "order": lambda: _Broken(_each(_items(lambda it: tuple(reversed(it))))),
    "propensity": lambda: _Broken(_each(_items(lambda it: tuple(s._replace(propensity=0.0)
                                                                for s in it)))),
    "risk": lambda: _Broken(_each(lambda p: setattr(p.risk, "score", 1.5))),
    "deterministic": lambda: _Broken(lambda b, ps: ps if b.calls < 3 else [
        Prediction(items=(), risk=p.risk, model=p.model, model_version=p.model_version,
                   risk_model_version=p.risk_model_version) for p in ps]),
    "batch_of_one": lambda: _Broken(lambda _, ps: ps if len(ps) > 1 else [
        Prediction(items=(), risk=p.risk, model=p.model, model_version=p.model_version,
                   risk_model_version=p.risk_model_version) for p in ps]),
    "learns": lambda: _LearnFails(),
}


def test_every_contract_rule_is_tried() -> None:
    assert set(BROKEN) == set(CONTRACT_RULES)


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_the_contract_names_the_rule_a_predictor_breaks(rule: str) -> None:
    fails = check_predictor(BROKEN[rule]())
    assert rule in {f.rule for f in fails}, fails
    assert all(f.message and "\n" not in f.message for f in fails)


def test_an_online_learner_is_not_asked_to_repeat_itself() -> None:
    online = _Broken(lambda b, ps: ps if b.calls < 3 else [])  # would break `answers` later
    assert "deterministic" in {f.rule for f in check_predictor(online)}
    online = _Broken(lambda b, ps: ps if b.calls < 3 else [])
    online.learns_online = True  # type: ignore[attr-defined]
    assert check_predictor(online) == []
