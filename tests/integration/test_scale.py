"""Scale-out: three workers share the partitions; one is killed and the other two take over."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from stream.devtools.procs import start_worker, stop_worker, wait_healthy
from stream.kafka.admin import ensure_topics
from stream.kafka.broker import free_port
from stream.settings import Settings
from tests.helpers import poll_until
from tests.integration.test_worker import encode, get_json, make_events, offline_counts, send

pytestmark = pytest.mark.integration

PARTITIONS = 6
# a killed worker is replaced once the broker stops hearing from it for this long
SESSION_TIMEOUT_S = 10


@contextmanager
def running(settings: Settings, tmp: Path, name: str) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp / f"{name}.log"
    proc = start_worker(settings, settings.data_dir, log, extra_env={
        "LAMSTREAM_STORE": "rocksdb", "LAMSTREAM_MODEL_NAME": "baseline",
        "LAMSTREAM_SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S), "LAMSTREAM_LOG_LEVEL": "INFO"})
    try:
        yield proc
    finally:
        stop_worker(proc)


def events_partitions(base: str, topic: str) -> set[int] | None:
    """The events partitions a healthy worker owns (None while it is starting/rebalancing)."""
    try:
        code, body = get_json(f"{base}/health")
    except OSError:
        return None
    if code != 200:
        return None
    return {int(a.rsplit(":", 1)[1]) for a in body["assignment"]
            if a.rsplit(":", 1)[0] == topic}


def split_between(bases: list[str], topic: str) -> list[set[int]] | None:
    """Each worker's events partitions if together they own all of them exactly once."""
    parts = [events_partitions(b, topic) for b in bases]
    if any(not p for p in parts):
        return None
    owned = [p for ps in parts for p in ps]  # type: ignore[union-attr]
    if len(owned) != len(set(owned)) or len(owned) != PARTITIONS:
        return None
    return parts  # type: ignore[return-value]


def mismatches(bases: list[str], want: dict[str, dict[str, int]]) -> list[str]:
    """Users not answered by exactly one worker (from its own partitions, ?local=1) with
    exactly the offline counts."""
    out = []
    for user, counts in want.items():
        owners = [body["counts"] for code, body in (get_json(f"{b}/features/{user}?local=1")
                                                     for b in bases) if code == 200]
        if owners != [counts]:
            out.append(f"{user}: want {counts}, workers answer {owners}")
    return out


def test_killing_one_of_three_workers_moves_its_partitions_and_keeps_counts_exact(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    base_settings = settings_factory(store="rocksdb", partitions=PARTITIONS)
    ensure_topics(base_settings)
    topic = base_settings.topic_prefix + "events"
    settings = [base_settings.model_copy(update={"data_dir": tmp_path / f"d{i}",
                                                 "web_port": free_port()}) for i in range(3)]
    bases = [f"http://127.0.0.1:{s.web_port}" for s in settings]
    events = make_events(6000, users=60, seed=7)
    replays = events[1000:1600]  # re-sent after the takeover: must be counted once
    want = offline_counts(events)

    with ExitStack() as stack:
        procs = [stack.enter_context(running(s, tmp_path, f"w{i}"))
                 for i, s in enumerate(settings)]
        for proc, base, i in zip(procs, bases, range(3), strict=True):
            wait_healthy(base, proc, 90, tmp_path / f"w{i}.log")
        before = poll_until(lambda: split_between(bases, topic), timeout=60, interval=0.5,
                            message="three workers share the events partitions")
        victim, survivors = 0, [1, 2]

        # the stream flows for ~3 s; the victim dies while it is still flowing
        sent = [0]
        done = threading.Event()

        def produce() -> None:
            for start in range(0, len(events), 200):
                send(base_settings, encode(events[start:start + 200]))
                sent[0] = start + 200
                time.sleep(0.1)
            done.set()

        producer = threading.Thread(target=produce, daemon=True)
        producer.start()
        poll_until(lambda: get_json(f"{bases[victim]}/api/stats")[1]["events"] >= 300,
                   timeout=30, message="the victim processed part of the stream")
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        killed_at = time.monotonic()
        sent_at_kill = sent[0]
        assert sent_at_kill < len(events), "the worker must die mid-stream"
        assert done.wait(60), "producer did not finish"
        send(base_settings, encode(replays))

        live = [bases[i] for i in survivors]
        after = poll_until(lambda: split_between(live, topic), timeout=45, interval=0.5,
                           message="the two survivors own every events partition")
        assert before[victim] <= after[0] | after[1]  # the victim's partitions moved

        print(f"takeover {time.monotonic() - killed_at:.1f}s after the kill")
        deadline = time.monotonic() + 45
        while (wrong := mismatches(live, want)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not wrong, f"{len(wrong)} users wrong after the takeover, e.g. {wrong[:3]}"
        print(f"exact counts {time.monotonic() - killed_at:.1f}s after the kill")
        # the survivors saw the victim's re-delivered records and the replays as duplicates
        dups = sum(get_json(f"{b}/api/stats")[1]["duplicates"] for b in live)
        assert dups >= len(replays)
