"""A broker that stops answering for a while (SIGSTOP of tansu: a GC pause, a network
partition) and comes back: the worker lives on, nothing is lost, memory stays bounded.

Each test starts its own broker, so freezing it disturbs no other test. The 5 s freeze
(shorter than the 10 s group session timeout) runs in `make test`; the 30 s one (longer
than the session timeout) only in `make faults`."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.client import EventProducer, PredictionSubscriber
from stream.devtools.procs import start_worker, stop_worker, wait_healthy
from stream.kafka.admin import ensure_topics
from stream.kafka.broker import EmbeddedBroker, free_port
from stream.schemas import Recommendation
from stream.settings import Settings
from tests.helpers import make_settings
from tests.integration.test_model_swap import triggers
from tests.integration.test_worker import encode, get_json, make_events, offline_counts

pytestmark = pytest.mark.integration

RSS_GROWTH_LIMIT_MB = 100


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(port=free_port(), log_dir=tmp_path / "broker") as broker:
        yield broker


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def produce(settings: Settings, events: list[dict[str, Any]], chunk: int, pause: float,
            progress: list[int]) -> None:
    """One producer for the whole run (a new one could not even connect to a frozen broker):
    chunks at a steady pace, still sending while the broker is frozen."""
    with EventProducer(settings, validate=False) as p:
        for start in range(0, len(events), chunk):
            for key, value in encode(events[start:start + chunk]):
                p.send_raw(value, key)
            progress[0] = start + chunk
            time.sleep(pause)
        p.flush()


def collect(settings: Settings, want: set[str], timeout: float) -> dict[str, Recommendation]:
    recs: dict[str, Recommendation] = {}
    deadline = time.monotonic() + timeout
    with PredictionSubscriber(settings, from_beginning=True) as sub:
        while not want <= set(recs) and time.monotonic() < deadline:
            for r in (m.value for m in sub.poll(0.5)):
                if isinstance(r, Recommendation):
                    recs[r.event_id] = r
    return recs


@pytest.mark.parametrize("freeze_s", [5, pytest.param(30, marks=pytest.mark.faults)])
def test_broker_frozen_mid_stream_then_back(own_broker: EmbeddedBroker, tmp_path: Path,
                                            prefix: str, freeze_s: int) -> None:
    s = make_settings(own_broker.bootstrap, prefix, tmp_path, store="rocksdb")
    pid = own_broker.pid
    assert pid is not None
    growth = freeze_mid_stream(s, tmp_path, lambda _worker: pid, freeze_s)
    assert growth < RSS_GROWTH_LIMIT_MB


@pytest.mark.faults
def test_worker_frozen_past_the_session_timeout_rejoins(own_broker: EmbeddedBroker,
                                                        tmp_path: Path, prefix: str) -> None:
    """The other side of a network partition: the broker expires the silent member (session
    timeout 10 s) and the worker, back after 20 s, must find itself fenced and rejoin."""
    s = make_settings(own_broker.bootstrap, prefix, tmp_path, store="rocksdb")
    freeze_mid_stream(s, tmp_path, lambda worker: worker, 20)


def freeze_mid_stream(s: Settings, tmp: Path, target: Callable[[int], int],
                      freeze_s: int) -> float:
    """Run a worker, SIGSTOP `target(worker pid)` for `freeze_s` while a producer keeps
    sending, SIGCONT; check the worker is alive and lost nothing. Returns its RSS growth."""
    ensure_topics(s)
    base = f"http://127.0.0.1:{s.web_port}"
    events = make_events(4000, users=50, seed=11)
    log = tmp / "w.log"
    proc = start_worker(s, s.data_dir, log, extra_env={"LAMSTREAM_LOG_LEVEL": "INFO"})
    try:
        wait_healthy(base, proc, 90, log)
        rss_before = rss_peak = rss_mb(proc.pid)
        progress = [0]
        # 40 chunks of 100 over the freeze and ~12 s more: ~4 s of stream before it
        pause = (freeze_s + 12) / 40
        producer = threading.Thread(target=produce, args=(s, events, 100, pause, progress),
                                    daemon=True)
        producer.start()
        while progress[0] < 1000:
            time.sleep(0.1)
        frozen = target(proc.pid)
        os.kill(frozen, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            while time.monotonic() - frozen_at < freeze_s:
                assert proc.poll() is None, f"the worker died during the freeze\n{tail(log)}"
                rss_peak = max(rss_peak, rss_mb(proc.pid))
                time.sleep(0.5)
        finally:
            os.kill(frozen, signal.SIGCONT)
        assert progress[0] < len(events), "the stream must still flow after the freeze"
        producer.join(120)
        assert not producer.is_alive(), "the producer never finished after the freeze"
        assert_nothing_lost(s, base, events, proc, log)
        print(f"freeze {freeze_s}s: RSS {rss_before:.0f} -> peak {rss_peak:.0f} MB "
              f"(+{rss_peak - rss_before:.0f}); worker pid {proc.pid} alive")
        return rss_peak - rss_before
    finally:
        stop_worker(proc)


def assert_nothing_lost(s: Settings, base: str, events: list[dict[str, Any]],
                        proc: subprocess.Popen[bytes], log: Path) -> None:
    """Every event counted once for its user, every view/click recommended, worker alive."""
    want = offline_counts(events)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the worker died after the freeze\n{tail(log)}"
        status, stats = get_json(f"{base}/api/stats")
        if status == 200 and stats["events"] >= len(events):
            break
        time.sleep(1.0)
    wrong = [u for u, c in want.items()
             if get_json(f"{base}/features/{u}")[1].get("counts") != c]
    assert not wrong, f"{len(wrong)} users with wrong counts, e.g. {wrong[:3]}\n{tail(log)}"
    recs = collect(s, triggers(events), timeout=60)
    missing = triggers(events) - set(recs)
    assert not missing, f"{len(missing)} views/clicks without a recommendation\n{tail(log)}"
    assert proc.poll() is None


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.mark.faults
def test_one_of_two_workers_frozen_past_the_session_timeout(own_broker: EmbeddedBroker,
                                                            tmp_path: Path,
                                                            prefix: str) -> None:
    """With a second member heartbeating, the broker expires the frozen one and moves its
    partitions; back after 20 s, the frozen worker is fenced and must rejoin cleanly (or
    exit, for its supervisor to restart it): the two together lose nothing."""
    s = make_settings(own_broker.bootstrap, prefix, tmp_path, store="rocksdb")
    ensure_topics(s)
    workers = [s.model_copy(update={"data_dir": tmp_path / f"d{i}", "web_port": free_port()})
               for i in range(2)]
    bases = [f"http://127.0.0.1:{w.web_port}" for w in workers]
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    events = make_events(4000, users=50, seed=12)
    procs = [start_worker(w, w.data_dir, log, extra_env={"LAMSTREAM_LOG_LEVEL": "INFO"})
             for w, log in zip(workers, logs, strict=True)]
    try:
        for base, proc, log in zip(bases, procs, logs, strict=True):
            wait_healthy(base, proc, 90, log)
        progress = [0]
        producer = threading.Thread(target=produce, args=(s, events, 100, 0.8, progress),
                                    daemon=True)
        producer.start()
        while progress[0] < 1000:
            time.sleep(0.1)
        procs[0].send_signal(signal.SIGSTOP)
        time.sleep(20)
        procs[0].send_signal(signal.SIGCONT)
        producer.join(120)
        want = offline_counts(events)
        deadline = time.monotonic() + 120
        wrong: list[str] = []
        while time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), "\n".join(tail(g) for g in logs)
            wrong = [u for u, c in want.items() if [
                body.get("counts") for code, body in (
                    get_json(f"{b}/features/{u}?local=1") for b in bases) if code == 200
            ] != [c]]
            if not wrong:
                break
            time.sleep(1.0)
        assert not wrong, f"{len(wrong)} users wrong, e.g. {wrong[:3]}\n{tail(logs[0])}"
        recs = collect(s, triggers(events), timeout=60)
        assert triggers(events) <= set(recs)
    finally:
        for proc in procs:
            stop_worker(proc)
