"""Risk labels on a real broker: scored events (decisions, alerts) + labels -> risk-feedback."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.client import EventProducer
from stream.devtools.procs import start_worker, stop_worker, wait_healthy
from stream.kafka.admin import ensure_topics
from stream.schemas import DlqRecord, RiskFeedback
from stream.settings import Settings
from tests.helpers import poll_until
from tests.integration.test_feedback import ev, read, send, start_feedback

pytestmark = pytest.mark.integration

MIN = 60_000
DAY = 86_400_000
T0 = 1_764_000_000_000


def send_to(s: Settings, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
    with EventProducer(s, validate=False) as p:
        for key, value in records:
            p.send_raw(value, key, topic=s.topic_prefix + topic)


def decision(user: str, eid: str, ts: int, score: float) -> tuple[bytes, bytes]:
    return user.encode(), orjson.dumps({
        "rec_id": f"rec:{eid}", "user_id": user, "event_id": eid, "event_ts": ts, "ts": ts,
        "items": [{"item_id": "i1", "score": 1.0, "propensity": 1.0}], "model": "m",
        "model_version": "v1", "policy": "greedy", "explored": False, "candidates": [],
        "features": {"events_total": float(ts - T0)}, "sequence": [["i1", "view", ts]],
        "risk_score": score, "risk_model_version": "risk-v1", "risk_threshold": 0.8})


def alert(user: str, eid: str, ts: int, score: float) -> tuple[bytes, bytes]:
    return user.encode(), orjson.dumps({
        "alert_id": f"alert:{eid}", "user_id": user, "event_id": eid, "score": score,
        "threshold": 0.8, "reasons": [], "model_version": "risk-v1", "ts": ts, "event_ts": ts,
        "latency_ms": 1.0, "features": {"count_purchase_1m": 4.0},
        "sequence": [["gift", "purchase", ts]]})


def label(user: str | None, ts: int, verdict: str = "fraud", event: str | None = None,
          key: bytes | None | str = "user") -> tuple[bytes | None, bytes]:
    body: dict[str, Any] = {"label": verdict, "source": "chargeback", "ts": ts}
    if user is not None:
        body["user_id"] = user
    if event is not None:
        body["event_id"] = event
    k = (user or "").encode() if key == "user" else key
    assert not isinstance(k, str)
    return k, orjson.dumps(body)


def by_event(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["event_id"]: r for r in records}


def test_labels_join_snapshots_in_either_order_once_and_across_a_restart(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    s = settings_factory(partitions=1, store="rocksdb")
    ensure_topics(s)
    send_to(s, "decisions", [
        decision("user-ann", "a1", T0, 0.1), decision("user-ann", "a2", T0 + MIN, 0.3),
        decision("user-bob", "b1", T0, 0.2), decision("user-dan", "d1", T0, 0.5)])
    # bob's purchase triggered no recommendation: its alert is its only snapshot
    send_to(s, "risk-alerts", [alert("user-bob", "b-buy", T0 + 2 * MIN, 0.95)])
    bad = [label(None, T0, event="a1", key=None),  # event only, unkeyed: nowhere to join
           label("user-ann", T0, event="a1", key=b"user-bob"),  # keyed by someone else
           (b"user-ann", b"{not json")]
    send_to(s, "risk-labels", [
        label("user-cy", T0 + 5 * MIN, event="c1"),  # before its snapshot: waits
        label("user-ann", T0 + 5 * MIN, event="a2"),
        label("user-bob", T0 + 10 * MIN, "legit"),  # the user: b1 and b-buy
        label("user-ann", T0 + 5 * MIN, event="a2"),  # a repeat
        *bad])
    fp = start_feedback(s, tmp_path / "f1.log")
    try:
        # one partition: a2's record means cy's earlier label was read before its snapshot
        poll_until(lambda: {"a2", "b1", "b-buy"} <= set(by_event(read(s, "risk-feedback",
                                                                      0.5))),
                   timeout=60, interval=0.5, message="records of the first labels")
        send_to(s, "decisions", [decision("user-cy", "c1", T0 + 3 * MIN, 0.6)])
        poll_until(lambda: "c1" in by_event(read(s, "risk-feedback", 0.5)), timeout=30,
                   interval=0.5, message="the early label joined its late snapshot")
    finally:
        stop_worker(fp)
    # state (snapshots, what was joined) survives a restart: d1 still there, a2 done
    send_to(s, "risk-labels", [label("user-ann", T0 + 5 * MIN, event="a2"),  # repeat
                               label("user-dan", T0 + DAY, "legit", event="d1")])
    fp = start_feedback(s, tmp_path / "f2.log")
    try:
        poll_until(lambda: "d1" in by_event(read(s, "risk-feedback", 0.5)), timeout=60,
                   interval=0.5, message="a label after the restart")
        records = read(s, "risk-feedback", 1.5)
    finally:
        stop_worker(fp)
    counts = Counter(r["event_id"] for r in records)
    assert counts == {"a2": 1, "b1": 1, "b-buy": 1, "c1": 1, "d1": 1}, counts
    fb = {r["event_id"]: RiskFeedback.model_validate_json(orjson.dumps(r)) for r in records}
    assert (fb["a2"].label, fb["a2"].label_scope, fb["a2"].score, fb["a2"].alerted) == (
        "fraud", "event", 0.3, False)
    assert fb["a2"].features == {"events_total": float(MIN)}  # the snapshot as scored
    assert (fb["b-buy"].label, fb["b-buy"].label_scope, fb["b-buy"].alerted) == (
        "legit", "user", True)
    assert fb["b-buy"].features == {"count_purchase_1m": 4.0}
    assert fb["b1"].label_ts == T0 + 10 * MIN and fb["b1"].event_ts == T0
    assert fb["b1"].user_key == fb["b-buy"].user_key != fb["a2"].user_key
    assert len({r["feedback_id"] for r in records}) == 5
    raw = b"".join(orjson.dumps(r) for r in records)
    assert b"user-" not in raw  # no raw user id anywhere
    dlq = [DlqRecord.model_validate_json(orjson.dumps(r)) for r in read(s, "events.dlq", 1.0)]
    assert sorted(d.error_kind for d in dlq) == ["key_mismatch", "not_json", "schema"]
    assert {d.topic for d in dlq} == {s.topic_prefix + "risk-labels"}
    assert sorted(d.raw_bytes() for d in dlq) == sorted(v for _, v in bad)
    assert base64.b64decode(next(d.key for d in dlq if d.error_kind == "not_json") or "") == (
        b"user-ann")


def test_the_workers_decisions_and_alerts_are_the_snapshots_labels_join(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    s = settings_factory(partitions=2)
    ensure_topics(s)
    t = T0
    views = [ev(f"v{j}", "user-eve", "view", f"item{j}", t + j * 1000) for j in range(5)]
    # a burst the baseline's risk model alerts on: purchases trigger no recommendation
    burst = [("user-eve", {"event_id": f"buy{i}", "user_id": "user-eve", "type": "purchase",
                           "item_id": f"gift{i % 2}", "ts": t + 10_000 + i * 5000,
                           "price": 200.0, "device_id": f"dev-{i % 5}",
                           "ip": f"10.0.{i % 6}.1"}) for i in range(8)]
    wp = start_worker(s, s.data_dir, tmp_path / "w.log")
    fp = start_feedback(s, tmp_path / "f.log")
    try:
        wait_healthy(f"http://127.0.0.1:{s.web_port}", wp, 90, tmp_path / "w.log")
        send(s, views + burst)
        alerts: dict[str, dict[str, Any]] = {}

        def alerted() -> bool:
            alerts.update(by_event(read(s, "risk-alerts", 0.5)))
            return any(e.startswith("buy") for e in alerts)
        poll_until(alerted, timeout=40, interval=0.5, message="an alert on the burst")
        decisions = by_event(read(s, "decisions", 0.5))
        assert {f"v{j}" for j in range(5)} <= set(decisions)
        assert all(d["risk_model_version"] and 0 <= d["risk_score"] <= 1
                   and d["risk_threshold"] == s.risk_threshold for d in decisions.values())
        buy = sorted(e for e in alerts if e.startswith("buy"))[0]
        assert buy not in decisions and alerts[buy]["features"]["count_purchase_1m"] >= 1
        send_to(s, "risk-labels", [label("user-eve", t + 60_000),
                                   label("user-eve", t + 60_000, event=buy)])
        want = {f"v{j}" for j in range(5)} | {e for e in alerts if e.startswith("buy")}

        def labelled() -> list[dict[str, Any]]:
            got = read(s, "risk-feedback", 0.5)
            return got if want <= {r["event_id"] for r in got if r["label_scope"] == "user"} \
                and any(r["label_scope"] == "event" for r in got) else []
        records = poll_until(labelled, timeout=40, interval=0.5, message="risk feedback")
        alerts.update(by_event(read(s, "risk-alerts", 0.5)))
    finally:
        stop_worker(fp)
        stop_worker(wp)
    fb = [RiskFeedback.model_validate_json(orjson.dumps(r)) for r in records]
    event_scoped = [f for f in fb if f.label_scope == "event"]
    assert [f.event_id for f in event_scoped] == [buy] and event_scoped[0].alerted
    for f in fb:
        src = alerts.get(f.event_id) or decisions[f.event_id]
        assert f.features == src["features"]  # point in time: as the model scored it
        assert f.score == src.get("risk_score", src.get("score"))
    assert b"user-eve" not in b"".join(orjson.dumps(r) for r in records)
