"""Category tastes for the reranker: the item catalogue, the logged categories, the features."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from model.nets.reranker import N_DENSE, N_DENSE_V1
from model.policy.catalog import ItemCatalog
from model.policy.exploration import ExplorationPredictor
from model.policy.policies import EpsilonGreedyPolicy, GreedyPolicy, KeyedRandom
from model.policy.reranker import DENSE_COLUMNS, Reranker, RerankInput, featurize
from model.testing import FakePredictor
from model.train.online import Example, OnlineConfig, OnlineTrainer, example_from_feedback
from model.types import PredictionContext, ScoredItem, SeqItem
from stream.records import decision_record, read_decision
from stream.schemas import Decision, Feedback


def test_catalog_is_bounded_and_keeps_the_newest() -> None:
    c = ItemCatalog(capacity=3)
    for i in range(5):
        c.observe(f"i{i}", f"c{i}")
    assert len(c) == 3 and c.get("i0") is None and c.get("i1") is None
    c.observe("i2", "moved")  # a new category moves the item to the newest end
    c.observe("i5", "c5")
    assert c.lookup(["i2", "i3", "i4", "i5"]) == ("moved", None, "c4", "c5")
    c.observe("i4", None)  # an event without a category changes nothing
    assert c.get("i4") == "c4"
    with pytest.raises(ValueError):
        ItemCatalog(0)


def test_dense_columns_name_every_column_the_net_reads() -> None:
    names = [name for name, _ in DENSE_COLUMNS]
    widths = [width for _, width in DENSE_COLUMNS]
    assert sum(widths) == N_DENSE and len(set(names)) == len(names)
    # a v1 net reads up to "repeat": the category columns were added after it
    assert sum(widths[:names.index("repeat") + 1]) == N_DENSE_V1
    start = sum(widths[:names.index("cat_seen")])
    assert start == 7  # the positions test_category_features reads


def test_category_features() -> None:
    r = Reranker.fresh()
    inp = RerankInput([("a", "view", 1), ("b", "view", 2), ("t", "click", 3)],
                      ["x", "y", "z"], [3.0, 2.0, 1.0], category="shoes",
                      candidate_categories=["shoes", "hats", None],
                      recent_categories=["hats", "hats", "shoes", None][-3:])
    d = featurize([inp], r.config).dense
    assert d.shape == (3, N_DENSE)
    seen, share, trig, known = d[:, 7], d[:, 8], d[:, 9], d[:, 10]
    # recent known categories: hats, shoes (the None is left out)
    assert seen.tolist() == [1.0, 1.0, 0.0]
    assert share.tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert trig.tolist() == [1.0, 0.0, 0.0] and known.tolist() == [1.0, 1.0, 0.0]
    # a pool whose categories do not line up with its candidates reads as unknown
    bad = RerankInput(inp.sequence, inp.candidates, inp.base_scores,
                      candidate_categories=["shoes"])
    assert featurize([bad], r.config).dense[:, 7:].abs().sum() == 0


def test_reranker_saved_before_category_features_still_loads(tmp_path: Path) -> None:
    r = Reranker.fresh()
    r.save(tmp_path / "new")
    old = tmp_path / "old"
    old.mkdir()
    cfg = r.config.to_dict()
    del cfg["dense_features"]
    (old / "config.json").write_text(json.dumps(cfg))
    state = r.net.state_dict()
    state["dense.weight"] = state["dense.weight"][:, :N_DENSE_V1].clone()
    import torch
    torch.save(state, old / "reranker.pt")
    v1 = Reranker.load(old)
    assert v1.config.dense_features == N_DENSE_V1
    inp = [RerankInput([("a", "view", 1)], ["x", "y"], [1.0, 0.5], None, ["c", "d"], ["c"])]
    assert len(v1.score(inp)[0]) == 2
    assert Reranker.load(tmp_path / "new").config.dense_features == N_DENSE


def _ctx(i: int, item: str, category: str | None, seq: list[str]) -> PredictionContext:
    s = tuple(SeqItem(x, "view", 1000 + j) for j, x in enumerate([*seq, item]))
    return PredictionContext("u1", f"e{i}", item, "view", 1000 + len(seq), category, s, {},
                             True, 2)


def test_exploring_predictor_logs_pool_and_recent_categories() -> None:
    cat = ItemCatalog()
    p = ExplorationPredictor(FakePredictor(catalogue=["a", "b", "c", "d"]), GreedyPolicy(), pool=4,
                             catalog=cat, recent_categories=2)
    # nothing known yet: nothing logged
    first = p.predict_batch([_ctx(0, "q", None, [])])[0]
    assert first.trace is not None and first.trace.candidate_categories == ()
    p.predict_batch([_ctx(1, "a", "ca", []), _ctx(2, "b", "cb", [])])
    pred = p.predict_batch([_ctx(3, "z", "cz", ["a", "b"])])[0]
    tr = pred.trace
    assert tr is not None
    pool = [c.item_id for c in tr.candidates]
    assert list(tr.candidate_categories) == [cat.get(i) for i in pool]
    assert "ca" in tr.candidate_categories
    assert tr.recent_categories == ("cb", "cz")  # last two: b, then the trigger z
    rec = {"rec_id": "r", "user_id": "u1", "event_id": "e3", "event_ts": 1, "ts": 2,
           "items": [{"item_id": i.item_id, "score": i.score, "propensity": i.propensity}
                     for i in pred.items], "model": "m", "model_version": "v"}
    ctx = _ctx(3, "z", "cz", ["a", "b"])
    d = read_decision(orjson.loads(decision_record(rec, ctx, pred, 0.9)))
    Decision.model_validate_json(orjson.dumps(d))
    assert d["candidate_categories"] == list(tr.candidate_categories)
    assert d["recent_categories"] == ["cb", "cz"]


# -- learning a category taste ---------------------------------------------------------
CATS = [f"c{k}" for k in range(20)]
ITEMS = {f"i{j}": CATS[j % 20] for j in range(2000)}
NAMES = list(ITEMS)


def world(n: int, seed: int) -> list[dict[str, Any]]:
    """Each user likes 2 categories; their recent items come mostly from those. A shown item
    of a liked category is engaged with (the first one) with probability 0.7. Pools are
    random, so item ids rarely repeat: only the category features can carry the taste."""
    rng = random.Random(seed)
    policy = EpsilonGreedyPolicy(start=0.3, floor=0.3)
    out = []
    for t in range(n):
        liked = set(rng.sample(CATS, 2))
        recent = [rng.choice([x for x in NAMES[:200] if ITEMS[x] in liked])
                  if rng.random() < 0.8 else rng.choice(NAMES) for _ in range(6)]
        pool = rng.sample(NAMES, 30)
        base = [rng.random() for _ in pool]
        choice = policy.choose([ScoredItem(p, s) for p, s in zip(pool, base, strict=True)], 5,
                               KeyedRandom(seed, str(t)))
        incl = dict(zip(pool, choice.inclusion, strict=True))
        shown = [c.item_id for c in choice.items]
        hit = [s for s in shown if ITEMS[s] in liked]
        eng = hit[0] if hit and rng.random() < 0.7 else None
        out.append({"rec_id": f"{seed}-{t}", "sequence": [[x, "view", j]
                                                          for j, x in enumerate(recent)],
                    "candidates": [{"item_id": p, "score": s, "propensity": incl[p]}
                                   for p, s in zip(pool, base, strict=True)],
                    "candidate_categories": [ITEMS[p] for p in pool],
                    "recent_categories": [ITEMS[x] for x in recent],
                    "shown": [{"item_id": s, "propensity": incl[s]} for s in shown],
                    "engaged_item": eng, "reward": 1.0 if eng else 0.0})
    return out


def test_feedback_example_keeps_categories_and_old_checkpoints_load() -> None:
    rec = world(1, 0)[0]
    ex = example_from_feedback(rec)
    assert ex is not None and ex.cand_cats == rec["candidate_categories"]
    assert ex.recent_cats == rec["recent_categories"]
    assert Example.from_json(ex.to_json()) == ex
    old_row = ex.to_json()[:8]  # a checkpoint written before the category fields
    assert Example.from_json(old_row).cand_cats is None
    Feedback.model_validate_json(orjson.dumps({
        "rec_id": "r", "user_key": "k", "key_id": "1", "features": {}, "sequence": [],
        "shown": [], "candidates": [], "engaged_item": None, "engaged_type": None,
        "reward": 0.0, "model": "m", "model_version": "v", "policy": "p", "explored": False,
        "candidate_categories": ["a", None], "recent_categories": [None],
        "decision_ts": 1, "outcome_ts": 2, "emitted_at": 3}))


def test_reranker_learns_a_category_taste_that_transfers_to_unseen_items() -> None:
    tr = OnlineTrainer(OnlineConfig(window=1500, min_window=300, bootstrap=200),
                       Reranker.fresh(seed=0))
    for b in range(6):
        tr.observe(world(500, 10 + b))
    gate = tr.gate()
    assert gate.passed, gate.reason
    # users and items the trainer never saw: the liked category's items come first
    rng = random.Random(99)
    wins = 0
    for _ in range(200):
        liked = rng.choice(CATS)
        recent = [x for x in NAMES[1000:] if ITEMS[x] == liked][:5]
        pool = rng.sample(NAMES[1000:], 30)
        scores = tr.candidate.score([RerankInput(
            [(x, "view", j) for j, x in enumerate(recent)], pool, [0.5] * 30, None,
            [ITEMS[p] for p in pool], [liked] * 5)])[0]
        best = pool[max(range(30), key=lambda j: scores[j])]
        wins += ITEMS[best] == liked or not any(ITEMS[p] == liked for p in pool)
    assert wins >= 180


def test_trainer_checkpoint_from_before_the_category_features_resumes(tmp_path: Path) -> None:
    """A checkpoint whose candidate reads 7 dense features and whose optimizer has one
    parameter group: the trainer resumes with its weights and buffers, a fresh optimizer."""
    import torch

    from stream.settings import Settings
    from stream.trainer.loop import ContinuousTrainer

    s = Settings(data_dir=tmp_path, trainer_gate_every=10_000)
    ct = ContinuousTrainer(s)
    ct.process(world(200, 1))
    ct.checkpoint()
    state = ct.state_dir
    cfg = json.loads((state / "candidate" / "config.json").read_text())
    del cfg["dense_features"]
    (state / "candidate" / "config.json").write_text(json.dumps(cfg))
    weights = torch.load(state / "candidate" / "reranker.pt", weights_only=True)
    weights["dense.weight"] = weights["dense.weight"][:, :N_DENSE_V1].clone()
    torch.save(weights, state / "candidate" / "reranker.pt")
    net = Reranker.fresh().net
    torch.save(torch.optim.Adagrad(net.parameters(), lr=0.05).state_dict(),
               state / "optimizer.pt")
    again = ContinuousTrainer(s)
    assert again.trainer.candidate.config.dense_features == N_DENSE_V1
    assert again.trainer.seen == ct.trainer.seen
    again.process(world(200, 2))  # trains on
    assert again.trainer.seen == ct.trainer.seen + 200
