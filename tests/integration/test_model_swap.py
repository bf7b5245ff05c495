"""A worker serves a trained model from the registry and hot-swaps to a newer one mid-stream."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from model.datasets import iter_events
from model.nets import RiskConfig, RiskNet
from model.registry import ModelRegistry
from model.risk.model import RiskScorer
from model.train.neural import TrainConfig
from model.train.pipeline import train_recommender
from stream.client import PredictionSubscriber, announce_model
from stream.kafka.admin import ensure_topics
from stream.schemas import Recommendation
from stream.settings import Settings
from tests.helpers import poll_until
from tests.integration.test_worker import encode, get_json, send, worker

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "stream" / "sample" / "events.jsonl"
# tiny nets and a few seconds of training: this tests serving and swapping, not accuracy
CARD = ("Time", *(f"V{i}" for i in range(1, 29)), "Amount")  # creditcard.csv's columns
TINY = TrainConfig(dim=16, layers=1, heads=1, epochs=3, budget_s=3.0, negatives=256)


def test_worker_serves_trained_model_then_hot_swaps_without_losing_events(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    s = settings_factory()
    ensure_topics(s)
    reg = ModelRegistry(s.data_dir)
    v1, comp1 = train_recommender(SAMPLE, s.data_dir, cfg=TINY)
    assert v1 == "v1" and comp1.served == reg.manifest("recommender", v1)["served"]
    events: list[dict[str, Any]] = list(iter_events(SAMPLE))
    first, rest = events[:800], events[800:]
    base = f"http://127.0.0.1:{s.web_port}"
    recs: dict[str, Recommendation] = {}
    with worker(s, tmp_path), PredictionSubscriber(s, from_beginning=True) as sub:
        def collect(want: set[str]) -> Callable[[], bool]:
            def done() -> bool:
                for r in (m.value for m in sub.poll(0.2)):
                    if isinstance(r, Recommendation):
                        assert r.event_id not in recs, f"two recommendations for {r.event_id}"
                        recs[r.event_id] = r
                return want <= set(recs)
            return done

        # the worker started on the registry's latest version, the evaluation's winner
        health = get_json(f"{base}/health")[1]
        assert (health["model"], health["model_version"]) == (comp1.served, v1)
        send(s, encode(first))
        poll_until(collect(triggers(first)), timeout=30, message="recommendations for v1")

        # publish v2 (only the neural nets: a different served method) and announce it while
        # events keep flowing; chunks go out until the worker says it serves v2
        v2, comp2 = train_recommender(SAMPLE, s.data_dir, cfg=TINY, methods=("gru", "sasrec"))
        assert v2 == "v2" and comp2.served in ("gru", "sasrec")
        announce_model(s, "recommender", v2)
        sent = 0
        while get_json(f"{base}/health")[1]["model_version"] != v2:
            assert sent < len(rest) - 200, "the worker never swapped to v2"
            send(s, encode(rest[sent: sent + 25]))
            sent += 25
            collect(set())()
        after = rest[sent:]
        send(s, encode(after))
        poll_until(collect(triggers(events)), timeout=30, message="recommendations for all")

        # a risk net on another dataset's columns (the ULB credit-card file) is refused with
        # the columns it lacks at /health; the recommender and risk in service stay
        bad = reg.publish("risk", RiskScorer(RiskNet(RiskConfig(feature_names=CARD))).save,
                          metadata={"features": list(CARD)})
        announce_model(s, "risk", bad)
        refused = poll_until(lambda: get_json(f"{base}/health")[1]["model_refused"],
                             timeout=30, message="the refusal of the foreign risk net")
        assert (refused["model"], refused["version"]) == ("risk", bad)
        assert "does not produce (Time, V1, V2, V3, V4 and 25 more)" in refused["reason"]
        assert get_json(f"{base}/health")[1]["model_version"] == v2

    assert set(recs) == triggers(events)  # nothing lost, nothing extra (no repeat of trigger)
    assert {recs[e].model_version for e in triggers(first)} == {v1}
    assert {recs[e].model for e in triggers(first)} == {comp1.served}
    assert {recs[e].model_version for e in triggers(after)} == {v2}
    assert {recs[e].model for e in triggers(after)} == {comp2.served}
    assert sum(len(recs[e].items) > 0 for e in triggers(after)) > 0.9 * len(triggers(after))
    # per user, in send order, versions never go back: the swap fell between batches
    by_user: dict[str, list[str]] = {}
    for e in events:
        if e["event_id"] in recs:
            by_user.setdefault(e["user_id"], []).append(recs[e["event_id"]].model_version)
    assert all(vs == sorted(vs) for vs in by_user.values())


def triggers(events: list[dict[str, Any]]) -> set[str]:
    return {e["event_id"] for e in events if e["type"] in ("view", "click")}
