"""`lamstream worker --processes 2` on the embedded broker: two group members under one
supervisor share the partitions, answer each other's users, and stop together on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from stream.client import EventProducer, tail
from stream.devtools.procs import get_json_status, stop_worker
from stream.kafka.broker import free_port
from stream.settings import Settings
from tests.helpers import poll_until
from tests.integration.test_scale import events_partitions
from tests.integration.test_worker import make_events

pytestmark = pytest.mark.integration

PARTITIONS = 4


def two_free_ports() -> int:
    """A port p with p + 1 free too (the second child's)."""
    for _ in range(50):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise AssertionError("no two consecutive free ports")


def children_of(pid: int) -> list[int]:
    """The pids whose parent is `pid` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_two_processes_share_the_work_route_queries_and_stop_together(tmp_path: Path) -> None:
    port, broker_port = two_free_ports(), free_port()
    prefix = f"procs{os.getpid()}."
    env = {k: v for k, v in os.environ.items() if k != "LAMSTREAM_BOOTSTRAP_SERVERS"}
    env.update({"LAMSTREAM_EMBEDDED_PORT": str(broker_port), "LAMSTREAM_TOPIC_PREFIX": prefix,
                "LAMSTREAM_APP_ID": f"procs-{os.getpid()}",
                "LAMSTREAM_PARTITIONS": str(PARTITIONS), "LAMSTREAM_STORE": "memory",
                "LAMSTREAM_MODEL_NAME": "baseline", "LAMSTREAM_LOG_LEVEL": "WARNING"})
    log = tmp_path / "supervisor.log"
    with log.open("wb") as out:
        sup = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker", "--processes", "2",
             "--web-port", str(port), "--data-dir", str(tmp_path / "data")],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    bases = [f"http://127.0.0.1:{port + i}" for i in range(2)]
    s = Settings(bootstrap_servers=f"127.0.0.1:{broker_port}", topic_prefix=prefix,
                 partitions=PARTITIONS)
    topic = prefix + "events"
    try:
        poll_until(lambda: sup.poll() is not None or _split(bases, topic), timeout=90,
                   interval=0.5, message=f"the two children share the {PARTITIONS} partitions")
        assert sup.poll() is None, log.read_text()[-2000:]
        assert (tmp_path / "data" / "p0").is_dir() and (tmp_path / "data" / "p1").is_dir()

        events = make_events(400, users=20, seed=3)
        with EventProducer(s) as producer:
            for ev in events:
                producer.send(ev)
        want = sum(1 for ev in events if ev["type"] in s.recommend_on)
        recs = Counter(v["event_id"] for _, v in tail(s, prefix + "recommendations",
                                                     from_beginning=True, max_records=want,
                                                     timeout=30))
        assert len(recs) == want and set(recs.values()) == {1}
        stats = [get_json_status(f"{b}/api/stats")[1] for b in bases]
        assert all(st["events"] > 0 for st in stats)
        assert sum(st["events"] for st in stats) == len(events)

        # every user is answered by either port, whichever child holds it
        for user in sorted({ev["user_id"] for ev in events}):
            holders = [b for b in bases
                       if get_json_status(f"{b}/features/{user}?local=1")[0] == 200]
            assert len(holders) == 1, user
            other = bases[1 - bases.index(holders[0])]
            code, body = get_json_status(f"{other}/features/{user}")
            assert code == 200 and body["user_id"] == user

        kids = children_of(sup.pid)
        assert len(kids) >= 3  # the broker and the two workers
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(60) == 0
        assert not [k for k in kids if alive(k)], log.read_text()[-2000:]
    finally:
        stop_worker(sup)


def _split(bases: list[str], topic: str) -> list[set[int]] | None:
    parts = [events_partitions(b, topic) for b in bases]
    if any(not p for p in parts):
        return None
    got = [p for ps in parts for p in ps]  # type: ignore[union-attr]
    return parts if sorted(got) == list(range(PARTITIONS)) else None  # type: ignore[return-value]
