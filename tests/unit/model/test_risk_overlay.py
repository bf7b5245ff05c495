"""The worker serves a published risk model with or without a published recommender, and
follows a risk publish / rollback announced on model-updates."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import torch

from model.nets import RiskConfig, RiskNet
from model.policy.exploration import ExplorationPredictor
from model.recommenders.baseline import BaselinePredictor
from model.registry import ModelRegistry
from model.risk.model import RiskScorer
from model.risk.overlay import RiskOverlay
from model.serving import ModelPredictor
from model.types import FEATURE_NAMES, PredictionContext, SeqItem
from stream.cli.service import build_predictor
from stream.settings import Settings
from stream.worker.exploration import ExploringHolder, exploration_wrapper
from stream.worker.model_updates import apply_update, registry_loader
from tests.unit.model.test_model_serving import _publish


def _publish_risk(reg: ModelRegistry, seed: int) -> str:
    torch.manual_seed(seed)
    net = RiskNet(RiskConfig(dim=8, seq_dim=4, max_len=8))
    net.fit_scaler(torch.rand(50, len(FEATURE_NAMES)) * 10)
    return reg.publish("risk", RiskScorer(net).save)


def _ctxs(n: int) -> list[PredictionContext]:
    return [PredictionContext(user_id=f"u{i}", event_id=f"e{i}", item_id=f"p{i}",
                              event_type="purchase", ts_ms=1000 * i, category=None,
                              sequence=(SeqItem(f"p{i}", "purchase", 1000 * i),),
                              features={"price": 7.0 * i, "gap_s": 2.0, "count_purchase": 1.0})
            for i in range(n)]


def _update(version: str, action: str = "publish") -> bytes:
    return orjson.dumps({"name": "risk", "version": version, "action": action, "ts": 1})


def test_worker_starts_with_the_published_risk_model_next_to_the_baseline(
        tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    plain = build_predictor(s)
    assert isinstance(plain, BaselinePredictor)  # nothing published: rules
    assert {p.risk_model_version for p in plain.predict_batch(_ctxs(2))} == {"rules-v1"}
    reg = ModelRegistry(tmp_path)
    v1 = _publish_risk(reg, 0)
    served = build_predictor(s)
    assert isinstance(served, RiskOverlay) and isinstance(served.inner, BaselinePredictor)
    preds = served.predict_batch(_ctxs(3))
    want = RiskScorer.load(reg.path("risk", v1)).score(_ctxs(3))
    assert [p.risk_model_version for p in preds] == [v1] * 3
    assert [p.risk.score for p in preds] == [w.score for w in want]
    assert all(p.model_version == "baseline-online" for p in preds)  # the recommender part


def test_risk_publish_and_rollback_swap_in_next_to_the_online_baseline(
        tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    reg = ModelRegistry(tmp_path)
    v1 = _publish_risk(reg, 0)
    v2 = _publish_risk(reg, 1)
    baseline = BaselinePredictor()
    holder = ExploringHolder(baseline, exploration_wrapper(s))  # as the worker holds it
    load = registry_loader(s, lambda: holder.current)

    async def follow(raw: bytes) -> None:
        await apply_update(raw, holder, load)
        assert holder.swap_if_offered()  # between batches

    asyncio.run(follow(_update(v2)))
    assert [p.risk_model_version for p in holder.current.predict_batch(_ctxs(2))] == [v2] * 2
    asyncio.run(follow(_update(v1, "rollback")))
    cur = holder.current
    assert isinstance(cur, ExplorationPredictor) and isinstance(cur.inner, RiskOverlay)
    assert cur.inner.inner is baseline  # what the baseline learned online is kept
    assert [p.risk_model_version for p in cur.predict_batch(_ctxs(2))] == [v1] * 2
    # a recommender announcement with no recommender published changes nothing
    rec = orjson.dumps({"name": "recommender", "version": "v1", "action": "publish", "ts": 1})
    assert asyncio.run(apply_update(rec, holder, load)) is None


def test_risk_publish_with_a_published_recommender_pins_the_risk_version(
        tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    reg = ModelRegistry(tmp_path)
    _publish(reg, "covisitation")
    _publish_risk(reg, 0)
    v2 = _publish_risk(reg, 1)
    reg.rollback("risk")
    load = registry_loader(s, lambda: BaselinePredictor())
    from stream.schemas import ModelUpdate

    got = load(ModelUpdate(name="risk", version=v2, action="publish", ts=1))
    assert isinstance(got, ModelPredictor) and got.risk_version == v2
    try:
        assert {p.risk_model_version for p in got.predict_batch(_ctxs(2))} == {v2}
    finally:
        got.close()
