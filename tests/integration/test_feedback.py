"""The feedback loop on a real broker: worker decisions -> join -> one feedback per rec."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.client import EventProducer, tail
from stream.devtools.procs import start_worker, stop_worker, wait_healthy
from stream.kafka.admin import ensure_topics
from stream.kafka.broker import free_port
from stream.records import read_decision
from stream.schemas import Decision, Feedback
from stream.settings import Settings
from tests.helpers import poll_until

pytestmark = pytest.mark.integration

KEY = "test-pseudonym-key-0123456789abcdef"
MIN = 60_000
T0 = 1_764_000_000_000


def start_feedback(s: Settings, log: Path, **extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **extra)
    env.update({
        "LAMSTREAM_BOOTSTRAP_SERVERS": s.bootstrap, "LAMSTREAM_DATA_DIR": str(s.data_dir),
        "LAMSTREAM_TOPIC_PREFIX": s.topic_prefix, "LAMSTREAM_APP_ID": s.app_id,
        "LAMSTREAM_PARTITIONS": str(s.partitions), "LAMSTREAM_STORE": s.store,
        "LAMSTREAM_PSEUDONYM_KEY": KEY, "LAMSTREAM_LOG_LEVEL": "WARNING",
        "LAMSTREAM_SESSION_TIMEOUT_S": "6",  # a killed member leaves the group sooner
    })
    return subprocess.Popen([sys.executable, "-m", "stream.cli.main", "feedback"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def read(s: Settings, topic: str, idle: float = 1.5) -> list[dict[str, Any]]:
    """A topic's records from the start; `decisions` in their expanded form."""
    got = [v for _, v in tail(s, s.topic_prefix + topic, from_beginning=True, timeout=idle)]
    return [read_decision(v) for v in got] if topic == "decisions" else got


def send(s: Settings, records: list[tuple[str, dict[str, Any]]]) -> None:
    with EventProducer(s, validate=False) as p:
        for key, value in records:
            p.send_raw(orjson.dumps(value), key.encode())


def ev(i: str, user: str, typ: str, item: str, ts: int) -> tuple[str, dict[str, Any]]:
    return user, {"event_id": i, "user_id": user, "type": typ, "item_id": item, "ts": ts}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return orjson.loads(resp.read())


def check_probes(probes: str, worker: str) -> None:
    """The join's /health and /metrics answer with what it joined, its lag is read from the
    broker (end minus committed), and the worker's Learning panel relays its /health."""
    def health() -> Any:
        h = get_json(probes + "/health")
        return h if h["rewards"]["feedback"] >= 6 and h["lag"]["read_at"] else None
    h = poll_until(health, timeout=30, interval=1.0, message="the join's /health and lag")
    assert h["status"] == "ok" and h["lag"]["error"] is None
    assert h["lag"]["group"].endswith("-feedback") and h["policies"]
    with urllib.request.urlopen(probes + "/metrics", timeout=5) as resp:
        metrics = resp.read().decode()
    assert 'lamstream_feedback_records_out_total{topic="feedback"}' in metrics
    assert "lamstream_feedback_consumer_lag{" in metrics
    learning = get_json(worker + "/api/learning")
    assert learning["available"] and learning["feedback"]["reachable"]
    assert learning["feedback"]["health"]["rewards"]["feedback"] >= 6
    assert learning["trainer"] is None  # TRAINER_URL empty: not asked


def test_worker_decisions_join_engagements_into_private_feedback(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    s = settings_factory(partitions=1)
    ensure_topics(s)
    # history so the online model knows items, then one view per user that gets a decision
    warm = [ev(f"w{u}-{j}", f"user-{u}", "view", f"item{(u + j) % 12}", T0 + j * 1000)
            for u in range(6) for j in range(8)]
    triggers = [ev(f"t{u}", f"user-{u}", "view", f"item{u}", T0 + 10 * MIN) for u in range(6)]
    probes = f"http://127.0.0.1:{free_port()}"  # the join's /health and /metrics
    wp = start_worker(s, s.data_dir, tmp_path / "w.log",
                      {"LAMSTREAM_FEEDBACK_URL": probes, "LAMSTREAM_TRAINER_URL": ""})
    fp = start_feedback(s, tmp_path / "f.log",
                        LAMSTREAM_FEEDBACK_WEB_PORT=probes.rsplit(":", 1)[1])
    try:
        wait_healthy(f"http://127.0.0.1:{s.web_port}", wp, 90, tmp_path / "w.log")
        send(s, warm + triggers)
        decs: dict[str, Decision] = {}

        def got_decisions() -> bool:
            for v in read(s, "decisions", 0.5):
                d = Decision.model_validate_json(orjson.dumps(v))
                decs[d.event_id] = d
            return all(f"t{u}" in decs for u in range(6))
        poll_until(got_decisions, timeout=40, interval=0.5, message="decisions of triggers")
        recs = {r["rec_id"]: r for r in read(s, "recommendations", 0.5)}
        d = {u: decs[f"t{u}"] for u in range(6)}
        for u in range(6):  # the decision log matches the published recommendation
            rec = recs[d[u].rec_id]
            assert [i.model_dump() for i in d[u].items] == rec["items"]
            assert d[u].sequence[-1] == (f"item{u}", "view", T0 + 10 * MIN)
            assert d[u].features["events_total"] == 9.0  # as of the decision
            assert sum(c.propensity for c in d[u].candidates) == pytest.approx(len(d[u].items))
            assert all(0 < i.propensity <= 1 for i in d[u].items)
        shown = {u: d[u].items[0].item_id for u in range(6)}
        later = [
            ev("c0", "user-0", "click", shown[0], T0 + 15 * MIN),  # on time: 1
            ev("c1", "user-1", "click", shown[1], T0 + 12 * MIN),  # click then purchase: 5
            ev("p1", "user-1", "purchase", shown[1], T0 + 20 * MIN),
            ev("p1", "user-1", "purchase", shown[1], T0 + 20 * MIN),  # duplicate event
            ev("c2", "user-2", "add_to_cart", shown[2], T0 + 55 * MIN),  # late: 0
            ev("c3", "user-3", "purchase", "never-shown", T0 + 12 * MIN),  # not shown: 0
            ev("c5", "user-5", "add_to_cart", shown[5], T0 + 11 * MIN),  # 2
            # user-4 does nothing: 0
            ev("clock", "clock-user", "view", "x", T0 + 3 * 60 * MIN),  # time moves on
        ]
        send(s, later)
        fb: list[dict[str, Any]] = []

        def all_closed() -> bool:
            fb[:] = read(s, "feedback", 1.0)
            have = {f["rec_id"] for f in fb}
            return all(d[u].rec_id in have for u in range(6))
        poll_until(all_closed, timeout=60, interval=1.0, message="feedback for the triggers")
        check_probes(probes, f"http://127.0.0.1:{s.web_port}")
        # the worker is told to re-send a decision (a crash between publish and commit)
        with EventProducer(s, validate=False) as p:
            p.send_raw(decs["t0"].model_dump_json().encode(), b"user-0",
                       topic=s.topic_prefix + "decisions")
        time.sleep(3)
        fb = read(s, "feedback", 1.0)
    finally:
        stop_worker(fp)
        stop_worker(wp)
    counts = Counter(f["rec_id"] for f in fb)
    assert counts and max(counts.values()) == 1, counts.most_common(3)
    by_rec = {f["rec_id"]: Feedback.model_validate_json(orjson.dumps(f)) for f in fb}
    rewards = {u: by_rec[d[u].rec_id].reward for u in range(6)}
    assert rewards == {0: 1.0, 1: 5.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 2.0}
    f1 = by_rec[d[1].rec_id]
    assert (f1.engaged_item, f1.engaged_type, f1.outcome_ts) == (
        shown[1], "purchase", T0 + 20 * MIN)
    assert f1.features == d[1].features  # the decision's snapshot, not later features
    assert [list(x) for x in f1.sequence] == [list(x) for x in d[1].sequence]
    assert [(i.item_id, i.propensity) for i in f1.shown] == [
        (i.item_id, i.propensity) for i in d[1].items]
    assert f1.model_version == d[1].model_version and f1.policy.startswith("epsilon_greedy")
    raw = b"".join(orjson.dumps(f) for f in fb)
    assert b"user-" not in raw and b"clock-user" not in raw  # no raw user id anywhere
    assert len({by_rec[d[u].rec_id].user_key for u in range(6)}) == 6


def test_exactly_one_feedback_per_rec_across_sigkill(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    s = settings_factory(partitions=2, store="rocksdb")
    ensure_topics(s)
    n = 3000
    users = 40

    def decision(i: int) -> tuple[str, dict[str, Any]]:
        u = f"u{i % users}"
        return u, {"rec_id": f"rec:e{i}", "user_id": u, "event_id": f"e{i}",
                   "event_ts": T0 + i * 20_000, "ts": 0,
                   "items": [{"item_id": f"i{i % 7}", "score": 1.0, "propensity": 0.5}],
                   "model": "m", "model_version": "v1", "policy": "greedy",
                   "explored": False, "candidates": [], "features": {"x": 1.0},
                   "sequence": [[f"i{i % 7}", "view", T0 + i * 20_000]]}

    def clicks(lo: int, hi: int) -> list[tuple[str, dict[str, Any]]]:
        return [ev(f"c{i}", f"u{i % users}", "click", f"i{i % 7}", T0 + i * 20_000 + 5000)
                for i in range(lo, hi) if i % 3 == 0]

    dec_topic = s.topic_prefix + "decisions"

    def send_decisions(lo: int, hi: int) -> None:
        with EventProducer(s, validate=False) as p:
            for i in range(lo, hi):
                key, value = decision(i)
                p.send_raw(orjson.dumps(value), key.encode(), topic=dec_topic)

    # 1. dies (os._exit, like SIGKILL) right after feedback was acked, before its state
    #    was saved: the restart must not emit those records again
    fp = start_feedback(s, tmp_path / "f1.log", LAMSTREAM_TEST_CRASH_AFTER_EMIT="3")
    try:
        send(s, clicks(0, 2000))
        send_decisions(0, 2000)
        assert fp.wait(60) == 137
    finally:
        if fp.poll() is None:
            fp.send_signal(signal.SIGKILL)
            fp.wait()
    before = len(read(s, "feedback", 0.5))
    send_decisions(1900, n)  # re-delivered (within the dedupe horizon) and new decisions
    end = T0 + n * 20_000 + 10 ** 8  # then time moves on in every partition
    send(s, clicks(2000, n) + [ev(f"clock{u}", f"u{u}", "view", "x", end)
                               for u in range(users)])
    # 2. a plain SIGKILL in mid-stream
    fp = start_feedback(s, tmp_path / "f2.log")
    try:
        poll_until(lambda: len(read(s, "feedback", 0.3)) > before + 200, timeout=40,
                   interval=0.3, message="feedback flowing again")
    finally:
        fp.send_signal(signal.SIGKILL)
        fp.wait()
    fp = start_feedback(s, tmp_path / "f3.log")
    try:
        poll_until(lambda: len({f["rec_id"] for f in read(s, "feedback", 0.5)}) >= n,
                   timeout=60, interval=1.0, message="every decision closed")
        time.sleep(2)
        fb = read(s, "feedback", 1.0)
    finally:
        stop_worker(fp)
    assert "will not be emitted again" in (tmp_path / "f2.log").read_text()
    counts = Counter(f["rec_id"] for f in fb)
    assert before < n, "the kill came too late to test anything"
    assert len(counts) == n and max(counts.values()) == 1, counts.most_common(3)
    rewarded = {f["rec_id"] for f in fb if f["reward"] == 1.0}
    assert rewarded == {f"rec:e{i}" for i in range(n) if i % 3 == 0}
