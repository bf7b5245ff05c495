"""The feedback join's and the trainer's /health and /metrics, and the worker's Learning
relay of them: served over HTTP from a thread, lag as end offset minus committed."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from kafka import TopicPartition

from stream.feedback.app import JoinStats
from stream.feedback.risk_labels import LabelStats
from stream.feedback.web import feedback_families, feedback_health
from stream.kafka.faust_patches import committed_offset
from stream.probes import LagProbe, ProbeServer, start_probe_server
from stream.settings import Settings
from stream.trainer.web import gate_outcome, trainer_families, trainer_health
from stream.worker.reports import learning_report, update_lag


def _lag(lag: dict[str, dict[int, int]]) -> LagProbe:
    probe = LagProbe(Settings(), "g", tuple(lag))
    probe.lag = lag
    return probe


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _feedback() -> Any:
    stats = JoinStats(decisions=10, engagements=7)
    for policy, rewarded in (("greedy", True), ("greedy", False), ("epsilon_greedy", True)):
        stats.add_feedback(policy, rewarded)
    app = SimpleNamespace(tables=SimpleNamespace(_recovery=SimpleNamespace(
        completed=SimpleNamespace(is_set=lambda: True))), should_stop=False, rebalancing=False)
    return SimpleNamespace(app=app, join=SimpleNamespace(stats=stats),
                           risk=SimpleNamespace(stats=LabelStats(labels=4, joined=3)))


def test_feedback_probes_answer_health_and_prometheus_over_http() -> None:
    fw, lag = _feedback(), _lag({"decisions": {0: 2, 1: 3}})
    server = ProbeServer("127.0.0.1", 0, lambda: feedback_health(fw, lag, 0.0),
                         lambda: feedback_families(fw, lag)).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, body = _get(base + "/health")
        health = json.loads(body)
        assert status == 200 and health["status"] == "ok"
        assert health["pending"] == 7 and health["lag"]["total"] == 5
        assert health["policies"]["greedy"] == {"feedback": 2, "rewarded": 1, "reward_rate": 0.5}
        status, text = _get(base + "/metrics")
        metrics = text.decode()
        assert status == 200
        for line in ('lamstream_feedback_records_out_total{topic="feedback"} 3.0',
                     'lamstream_feedback_records_out_total{topic="risk-feedback"} 3.0',
                     'lamstream_feedback_rewards_joined_total{policy="greedy"} 1.0',
                     'lamstream_feedback_reward_rate{policy="epsilon_greedy"} 1.0',
                     "lamstream_feedback_pending 7.0",
                     'lamstream_feedback_consumer_lag{partition="1",topic="decisions"} 3.0'):
            assert line in metrics, line
        assert _get(base + "/nope")[0] == 404
        fw.app.should_stop = True  # stopping: not ready
        assert _get(base + "/health")[0] == 503
    finally:
        server.close()


class _Model:
    def __init__(self, **stats: Any) -> None:
        self._stats = stats

    def stats(self) -> dict[str, Any]:
        return self._stats


def test_trainer_probes_count_gate_decisions_and_name_serving_versions() -> None:
    ct = SimpleNamespace(
        trainer=_Model(seen=40, trained=30, serving="v2"),
        risk=_Model(seen=9, trained=9, serving="v1"),
        gates=[{"gate": {"passed": True}, "published": "v2"}, {"gate": {"passed": False}}],
        risk_gates=[{"gate": {"decided": False, "passed": False}}],
        sequence=_Model(seen=500, trained=120, serving="v4", polls=3, skipped=7,
                        last_candidate_hr=0.25, last_serving_hr=0.2),
        sequence_gates=[{"gate": {"passed": True}, "published": "v4"}],
        published=["v2"], risk_published=[], sequence_published=["v4"])
    lag = _lag({"feedback": {0: 4}})
    health = trainer_health(ct, lag, 0.0)
    assert health["models"]["reranker"]["gates"] == {"published": 1, "refused": 1}
    assert health["models"]["risk"]["gates"] == {"undecided": 1}
    assert health["models"]["risk"]["serving"] == "v1" and health["lag"]["total"] == 4
    assert health["models"]["recommender"]["gates"] == {"published": 1}
    assert health["published"]["recommender"] == ["v4"]
    server = start_probe_server("trainer", "127.0.0.1", 0, lambda: health, lambda: [])
    assert server is None  # port 0: not served
    server = ProbeServer("127.0.0.1", 0, lambda: health,
                         lambda: trainer_families(ct, lag)).start()
    try:
        metrics = _get(f"http://127.0.0.1:{server.port}/metrics")[1].decode()
    finally:
        server.close()
    for line in ('lamstream_trainer_gate_decisions_total{model="reranker",outcome="refused"} 1.0',
                 'lamstream_trainer_serving_version_info{model="risk",version="v1"} 1.0',
                 'lamstream_trainer_records_in_total{model="reranker"} 40.0',
                 'lamstream_trainer_records_in_total{model="recommender"} 500.0',
                 'lamstream_trainer_serving_version_info{model="recommender",version="v4"} 1.0',
                 "lamstream_trainer_sequence_polls_total 3.0",
                 "lamstream_trainer_sequence_events_skipped_total 7.0",
                 'lamstream_trainer_sequence_prequential_hr20{side="serving"} 0.2',
                 'lamstream_trainer_consumer_lag{partition="0",topic="feedback"} 4.0'):
        assert line in metrics, line
    assert gate_outcome({"gate": {"decided": True}}) == "refused"


def test_a_taken_port_is_logged_and_the_process_runs_on(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    first = ProbeServer("127.0.0.1", 0, dict, list).start()
    try:
        assert start_probe_server("feedback", "127.0.0.1", first.port, dict, list) is None
        assert "cannot serve /health and /metrics" in caplog.text
    finally:
        first.close()


class _Consumer:
    def __init__(self, committed: dict[Any, int | None], high: dict[Any, int]) -> None:
        self._committed_offset = committed
        self._high = high

    def assignment(self) -> set[Any]:
        return set(self._high)

    def highwater(self, tp: Any) -> int:
        return self._high[tp]


def test_worker_lag_is_end_offset_minus_committed_not_fetched() -> None:
    a, b = TopicPartition("events", 0), TopicPartition("events", 1)
    consumer = _Consumer({a: 40}, {a: 100, b: 30})
    consumer._read_offset = {a: 99, b: 29}  # type: ignore[attr-defined]  # all fetched
    gauge = SimpleNamespace(labels=lambda **_: SimpleNamespace(set=lambda v: None))
    worker = SimpleNamespace(app=SimpleNamespace(consumer=consumer),
                             topics=SimpleNamespace(events=SimpleNamespace(name="events")),
                             metrics=SimpleNamespace(consumer_lag=gauge))
    assert committed_offset(consumer, b) is None
    assert update_lag(worker) == {"0": 60, "1": 30}  # type: ignore[arg-type]


def test_learning_relays_the_processes_health_or_says_none_answers() -> None:
    fw, lag = _feedback(), _lag({})
    server = ProbeServer("127.0.0.1", 0, lambda: feedback_health(fw, lag, 0.0), list).start()

    async def report(feedback_url: str | None) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            worker = SimpleNamespace(
                app=SimpleNamespace(http_client=http), learning=None,
                topics=SimpleNamespace(feedback=SimpleNamespace(name="feedback")),
                settings=Settings(feedback_url=feedback_url, trainer_url="http://127.0.0.1:9"))
            return await learning_report(worker)  # type: ignore[arg-type]
    try:
        live = asyncio.run(report(f"http://127.0.0.1:{server.port}"))
    finally:
        server.close()
    assert live["available"] and live["feedback"]["health"]["rewards"]["feedback"] == 3
    assert live["trainer"]["reachable"] is False and live["trainer"]["error"]
    away = asyncio.run(report(None))
    assert not away["available"] and away["feedback"] is None
    assert away["message"].startswith("Feedback is not produced yet")
