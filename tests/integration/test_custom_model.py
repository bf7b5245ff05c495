"""A worker serves the user's own torch model (examples/custom_model, LAMSTREAM_PREDICTOR):
recommendations, the decision log and the dashboard name it; announcements are ignored."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from stream.client import PredictionSubscriber, announce_model, tail
from stream.devtools.procs import start_worker, stop_worker, wait_healthy
from stream.kafka.admin import ensure_topics
from stream.schemas import Recommendation
from stream.settings import Settings
from tests.helpers import poll_until
from tests.integration.test_model_swap import triggers
from tests.integration.test_worker import encode, get_json, make_events, send

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_worker_serves_the_example_custom_model_and_ignores_announcements(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    s = settings_factory()
    ensure_topics(s)
    path = os.pathsep.join(p for p in (str(EXAMPLES), os.environ.get("PYTHONPATH")) if p)
    log = tmp_path / "worker.log"
    proc = start_worker(s, s.data_dir, log, extra_env={
        "LAMSTREAM_PREDICTOR": "custom_model:make_predictor", "PYTHONPATH": path})
    base = f"http://127.0.0.1:{s.web_port}"
    recs: dict[str, Recommendation] = {}

    def collect(sub: PredictionSubscriber, want: set[str]) -> Callable[[], bool]:
        def done() -> bool:
            recs.update((r.value.event_id, r.value) for r in sub.poll(0.2)
                        if isinstance(r.value, Recommendation))
            return want <= set(recs)
        return done

    try:
        wait_healthy(base, proc, 90, log)
        health = get_json(f"{base}/health")[1]
        assert (health["model"], health["model_version"]) == ("custom-torch", "1.0")
        first, second = make_events(300, 12, seed=1), make_events(300, 12, seed=2)
        with PredictionSubscriber(s, from_beginning=True) as sub:
            send(s, encode(first))
            poll_until(collect(sub, triggers(first)), timeout=60,
                       message="recommendations of the custom model")
            # an announcement of lamstream's own recommender is logged and ignored
            announce_model(s, "recommender", "v7")
            poll_until(lambda: "recommender v7 ignored" in log.read_text(), timeout=30,
                       message="the worker logs the ignored announcement")
            send(s, encode(second))
            poll_until(collect(sub, triggers(first + second)), timeout=60,
                       message="recommendations after the announcement")
        # the dashboard and the decision log (what the feedback join reads) name it too
        status, stats = get_json(f"{base}/api/stats")
        assert status == 200 and "custom-torch" in json.dumps(stats)
        decisions = [v for _, v in tail(s, f"{s.topic_prefix}decisions", from_beginning=True,
                                        timeout=3)]
    finally:
        stop_worker(proc)
    assert {(r.model, r.model_version) for r in recs.values()} == {("custom-torch", "1.0")}
    assert all(r.items and len(r.items) == s.top_k for r in recs.values())
    assert all(i.item_id.startswith("item-") for r in recs.values() for i in r.items)
    assert {d["event_id"] for d in decisions} >= triggers(first + second)
    assert {(d["model"], d["model_version"]) for d in decisions} == {("custom-torch", "1.0")}
