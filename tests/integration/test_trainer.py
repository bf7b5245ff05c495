"""The trainer consumes feedback and risk-feedback, publishes a gated reranker / risk model,
and the worker follows each (and a rollback) between batches."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from model.registry import ModelRegistry
from model.risk.model import RiskScorer
from stream.cli.model import model_app
from stream.client import EventProducer, PredictionSubscriber
from stream.kafka.admin import ensure_topics
from stream.schemas import Recommendation, RiskAlert
from stream.settings import Settings
from stream.topics import topics_for
from stream.trainer.loop import run_trainer
from tests.helpers import poll_until
from tests.integration.test_worker import encode, get_json, send, worker
from tests.unit.model.test_online_trainer import ITEMS, world
from tests.unit.model.test_risk_online import risk_world

pytestmark = pytest.mark.integration


def _events(n: int, start: int) -> list[dict[str, Any]]:
    return [{"event_id": f"t-{start + i}", "user_id": f"u{i % 7}", "type": "view",
             "item_id": ITEMS[(start + i) % len(ITEMS)], "ts": 1_700_000_000_000 + start + i}
            for i in range(n)]


def test_trainer_publishes_and_worker_follows_publish_and_rollback(
        settings_factory: Callable[..., Settings], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_factory(trainer_gate_every=1000, trainer_min_window=300,
                         policy_pool=30, top_k=5)
    ensure_topics(s)
    # feedback as the join would write it: users engage with GOOD items when shown
    with EventProducer(s, topic=topics_for(s).feedback.name, validate=False) as p:
        for rec in world(3000, 11):
            p.send_raw(orjson.dumps({**rec, "user_key": "k", "key_id": "k1"}), b"k")
    probes = f"http://127.0.0.1:{s.trainer_web_port}"
    seen: list[dict[str, Any]] = []  # the trainer's /health while it runs
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            with contextlib.suppress(OSError):
                seen.append(get_json(probes + "/health")[1])
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        ct = run_trainer(s, once=True, idle_exit_s=3.0)
    finally:
        stop.set()
        watcher.join()
    assert ct.trainer.seen == 3000 and ct.published, ct.gates
    assert seen and all(h["status"] == "ok" for h in seen)
    last = seen[-1]["models"]["reranker"]
    assert last["seen"] == 3000 and last["gates"].get("published", 0) >= 1, seen[-1]
    assert seen[-1]["lag"]["group"] == f"{s.app_id}-trainer"
    reg = ModelRegistry(s.data_dir)
    v_first = ct.published[0]
    assert reg.latest("reranker") == ct.published[-1]
    # a restart resumes from the checkpoint and the committed offsets: nothing is re-read
    again = run_trainer(s, once=True, idle_exit_s=2.0)
    assert again.trainer.seen == 3000 and again.published == []

    base = f"http://127.0.0.1:{s.web_port}"
    versions: list[str] = []
    sent = 0
    with worker(s, tmp_path), PredictionSubscriber(s, from_beginning=True) as sub:
        def swap_to(version: str) -> None:
            nonlocal sent

            def served() -> bool:
                nonlocal sent
                send(s, encode(_events(20, sent)))
                sent += 20
                for r in (m.value for m in sub.poll(0.3)):
                    if isinstance(r, Recommendation):
                        versions.append(r.model_version)
                return bool(versions) and versions[-1].endswith(f"+rerank-{version}")
            poll_until(served, timeout=60, interval=0.1,
                       message=f"the worker serving reranker {version}")

        # the worker loaded the latest reranker at start
        swap_to(ct.published[-1])
        assert get_json(f"{base}/health")[1]["model_version"].endswith(ct.published[-1])
        if len(ct.published) == 1:  # make a second version to roll back from
            reg.publish("reranker", ct.trainer.candidate.save)
        latest = reg.latest("reranker")
        assert latest is not None
        monkeypatch.setenv("LAMSTREAM_BOOTSTRAP_SERVERS", s.bootstrap)
        monkeypatch.setenv("LAMSTREAM_TOPIC_PREFIX", s.topic_prefix)
        r = CliRunner().invoke(model_app, ["announce", "reranker", "--data-dir",
                                           str(s.data_dir)])
        assert r.exit_code == 0, r.output
        swap_to(latest)
        r = CliRunner().invoke(model_app, ["rollback", "reranker", "--data-dir",
                                           str(s.data_dir)])
        assert r.exit_code == 0 and "announced" in r.output, r.output
        previous = reg.latest("reranker")
        assert previous is not None and previous != latest
        n_before = len(versions)
        swap_to(previous)
        # the rollback took effect within a couple of batches, and never flipped back
        after = versions[n_before:]
        first = next(i for i, v in enumerate(after) if v.endswith(f"+rerank-{previous}"))
        assert all(v.endswith(f"+rerank-{previous}") for v in after[first:])
    assert v_first in reg.versions("reranker")


def test_trainer_publishes_risk_from_labels_and_worker_alerts_follow_publish_and_rollback(
        settings_factory: Callable[..., Settings], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings_factory(trainer_risk_gate_every=1000, trainer_risk_window=2000)
    ensure_topics(s)
    # labelled scored events as the risk-label join writes them
    with EventProducer(s, topic=topics_for(s).risk_feedback.name, validate=False) as p:
        for rec in risk_world(2000, 5):
            p.send_raw(orjson.dumps(rec), b"k")
    monkeypatch.setenv("LAMSTREAM_RISK_THRESHOLD", "0")  # every event alerts: each names
    monkeypatch.setenv("LAMSTREAM_BOOTSTRAP_SERVERS", s.bootstrap)  # its risk model
    monkeypatch.setenv("LAMSTREAM_TOPIC_PREFIX", s.topic_prefix)
    reg = ModelRegistry(s.data_dir)
    versions: list[str] = []
    sent = 0
    with worker(s, tmp_path), PredictionSubscriber(
            s, topics=[topics_for(s).risk_alerts.name], from_beginning=True) as sub:
        def serves(version: str) -> None:
            def latest() -> bool:
                nonlocal sent
                send(s, encode(_events(10, 100_000 + sent)))
                sent += 10
                versions.extend(v.model_version for v in (r.value for r in sub.poll(0.3))
                                if isinstance(v, RiskAlert))
                return bool(versions) and versions[-1] == version
            poll_until(latest, timeout=40, interval=0.1,
                       message=f"risk alerts naming {version}")

        serves("rules-v1")  # nothing published yet: the rule score
        ct = run_trainer(s, once=True, idle_exit_s=2.0)
        assert ct.risk.seen == 2000 and ct.risk_published, ct.risk_gates
        assert ct.published == []  # no feedback: the reranker path did nothing
        assert reg.latest("risk") == ct.risk_published[-1]
        serves(ct.risk_published[-1])  # announced on model-updates: the worker swapped
        if len(ct.risk_published) == 1:  # a second version to roll back from
            reg.publish("risk", RiskScorer(ct.risk.candidate).save)
            r = CliRunner().invoke(model_app, ["announce", "risk", "--data-dir",
                                               str(s.data_dir)])
            assert r.exit_code == 0, r.output
            serves(reg.latest("risk") or "")
        r = CliRunner().invoke(model_app, ["rollback", "risk", "--data-dir", str(s.data_dir)])
        assert r.exit_code == 0 and "announced" in r.output, r.output
        previous = reg.latest("risk")
        assert previous is not None
        n_before = len(versions)
        serves(previous)
        after = versions[n_before:]
        first = after.index(previous)
        assert all(v == previous for v in after[first:])  # never flipped back
