"""The stream side of the Predictor seam, with model.testing fakes: holder swaps, updates."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from model.predictor import Predictor
from model.testing import FakePredictor, FakeRecommender
from model.types import PredictionContext, SeqItem
from stream.schemas import ModelUpdate
from stream.settings import Settings
from stream.worker.exploration import exploring_holder
from stream.worker.holder import PredictorHolder
from stream.worker.model_updates import apply_update, decode_update
from tests.helpers import poll_until


def _ctx(i: int, event_type: str = "view", **features: float) -> PredictionContext:
    return PredictionContext(user_id=f"u{i}", event_id=f"e{i}", item_id="item-0",
                             event_type=event_type, ts_ms=1_000 + i, category=None,
                             sequence=(SeqItem("item-0", event_type, 1_000 + i),),
                             features=dict(features), recommend=event_type == "view", k=3)


def _update(name: str = "recommender", version: str = "v2") -> bytes:
    return orjson.dumps({"name": name, "version": version, "action": "publish", "ts": 1})


def test_fake_predictor_satisfies_the_protocol_and_the_contract() -> None:
    fake = FakePredictor(version="v7")
    assert isinstance(fake, Predictor)
    ctxs = [_ctx(1), _ctx(2, "purchase", count_purchase_1m=10.0), _ctx(3)]
    out = fake.predict_batch(ctxs)
    assert [p.model_version for p in out] == ["v7"] * 3
    assert [len(p.items) for p in out] == [3, 0, 3]  # k honoured, none when recommend=False
    assert all("item-0" not in {i.item_id for i in p.items} for p in out)  # never the trigger
    assert out[1].risk.score == 1.0 and out[1].risk.reasons[0].feature == "count_purchase_1m"
    assert out[0].risk.score == 0.0 and not out[0].risk.reasons
    assert fake.batch_sizes == [3] and fake.seen_event_ids == ["e1", "e2", "e3"]
    rec = FakeRecommender(["a", "b", "c"])
    assert rec.recommend([[]], 2, [{"a"}]) == [[("b", 0.5), ("c", 1 / 3)]]


def test_holder_swaps_only_between_batches_and_closes_the_retired_predictor() -> None:
    v1, v2, v3 = (FakePredictor(version=f"v{n}") for n in (1, 2, 3))
    holder = PredictorHolder(v1)
    assert holder.pending is None
    holder.offer(v2)
    assert holder.current is v1  # an offer alone changes nothing mid-batch
    assert holder.pending is v2  # what /health names as model_version_pending
    holder.offer(v3)  # v2 superseded before it served
    assert holder.swap_if_offered() and holder.current is v3
    assert holder.pending is None
    assert not holder.swap_if_offered()
    poll_until(lambda: v1.closed and v2.closed, timeout=5, message="retired predictors closed")
    assert not v3.closed


def test_model_update_loads_the_announced_version_and_ignores_bad_records() -> None:
    holder = PredictorHolder(FakePredictor(version="v1"))
    asked: list[ModelUpdate] = []

    def load(update: ModelUpdate) -> FakePredictor:
        asked.append(update)
        if update.version == "broken":
            raise OSError("weights.pt: truncated")
        return FakePredictor(version=update.version)

    async def run() -> list[object]:
        return [await apply_update(raw, holder, load) for raw in (
            b"{not json", orjson.dumps({"name": "recommender"}), _update("ranker", "v9"),
            _update(version="broken"), _update(version="v2"))]

    results = asyncio.run(run())
    assert results[:4] == [None, None, None, None]  # malformed, incomplete, unknown, failing
    assert [u.version for u in asked] == ["broken", "v2"]
    assert holder.current.version == "v1"
    assert holder.swap_if_offered() and holder.current.version == "v2"
    assert decode_update(_update("risk", "v3")) == ModelUpdate(
        name="risk", version="v3", action="publish", ts=1)


def test_the_exploring_holder_names_the_loaded_version_while_it_waits(tmp_path: Path) -> None:
    holder = exploring_holder(FakePredictor(version="v1"), Settings(data_dir=tmp_path))
    holder.offer(FakePredictor(version="v2"))
    pending = holder.pending
    assert pending is not None and pending.version == "v2"
    assert holder.current.version == "v1"
    assert holder.swap_if_offered() and holder.current.version == "v2"
    assert holder.pending is None
