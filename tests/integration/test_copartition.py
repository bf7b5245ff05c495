"""Co-partitioning that does not depend on the producer's partitioner (docs/topics.md).

A librdkafka-style producer puts each event on crc32(key) % partitions (confluent-kafka's
default), not on murmur2(key) % partitions (the Java client's). Two workers still count every
user exactly once, `/features` finds every user from either worker, and the feedback join
matches each click with the decision it followed: the worker writes a user's decisions to the
partition its events came from.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from stream.devtools.procs import stop_worker
from stream.kafka.admin import ensure_topics
from stream.kafka.broker import free_port
from stream.kafka.publish import default_partition
from stream.settings import Settings
from tests.helpers import poll_until
from tests.integration.test_feedback import MIN, T0, ev, read, start_feedback
from tests.integration.test_worker import get_json, offline_counts, wait_sharing, worker

pytestmark = pytest.mark.integration

USERS = [f"user-{u}" for u in range(12)]


def crc32_send(s: Settings, records: list[tuple[str, dict[str, Any]]]) -> None:
    """Keyed by user id, placed like librdkafka's consistent_random partitioner."""
    producer = KafkaProducer(bootstrap_servers=s.bootstrap)
    try:
        for user, value in records:
            key = user.encode()
            producer.send(s.topic_prefix + "events", orjson.dumps(value), key=key,
                          partition=zlib.crc32(key) % s.partitions)
        producer.flush()
    finally:
        producer.close()


def test_a_crc32_producer_gets_exact_counts_and_rewarded_feedback(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    s1 = settings_factory(data_dir=tmp_path / "d1")
    s2 = s1.model_copy(update={"data_dir": tmp_path / "d2", "web_port": free_port()})
    ensure_topics(s1)
    moved = [u for u in USERS if zlib.crc32(u.encode()) % 4 != default_partition(u.encode(), 4)]
    assert len(moved) >= 6, "the two partitioners must disagree for the test to mean anything"
    warm = [ev(f"w{u}-{j}", user, "view", f"item{(u + j) % 12}", T0 + j * 1000)
            for u, user in enumerate(USERS) for j in range(8)]
    triggers = [ev(f"t{u}", user, "view", f"item{u}", T0 + 10 * MIN)
                for u, user in enumerate(USERS)]
    fp = start_feedback(s1, tmp_path / "f.log")
    try:
        fb, decs = _run(s1, s2, tmp_path, warm + triggers, moved)
    finally:
        stop_worker(fp)
    rewards = {u: fb[decs[f"t{u}"]["rec_id"]]["reward"] for u in range(len(USERS))}
    assert rewards == {u: 1.0 for u in range(len(USERS))}


def _run(s1: Settings, s2: Settings, tmp_path: Path, first: list[tuple[str, dict[str, Any]]],
         moved: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Two workers: `first` sent, then a click on each trigger's first item, then time
    moves on; checks the counts and the routing, returns (feedback, decisions) by id."""
    with worker(s1, tmp_path, "a"), worker(s2, tmp_path, "b"):
        bases = [f"http://127.0.0.1:{x.web_port}" for x in (s1, s2)]
        wait_sharing(s1, bases)
        crc32_send(s1, first)
        decs: dict[str, dict[str, Any]] = {}

        def got_decisions() -> bool:
            decs.update((d["event_id"], d) for d in read(s1, "decisions", 0.5))
            return all(f"t{u}" in decs and decs[f"t{u}"]["items"] for u in range(len(USERS)))
        poll_until(got_decisions, timeout=40, interval=0.5, message="decisions of triggers")
        clicks = [ev(f"c{u}", user, "click", decs[f"t{u}"]["items"][0]["item_id"],
                     T0 + 15 * MIN) for u, user in enumerate(USERS)]
        later = [ev(f"clock{u}", user, "view", "x", T0 + 3 * 60 * MIN)  # time moves on
                 for u, user in enumerate(USERS)]
        crc32_send(s1, clicks + later)

        want = offline_counts([v for _, v in first + clicks + later])

        def exact() -> bool:
            for user, counts in want.items():
                answers = [get_json(f"{b}/features/{user}?local=1") for b in bases]
                owners = [body for code, body in answers if code == 200]
                if len(owners) != 1 or owners[0]["counts"] != counts:
                    return False
            return True
        poll_until(exact, timeout=60, interval=0.5,
                   message="each user counted exactly once, by exactly one worker")
        for user in moved:  # routing asks the murmur2 owner first, then the others
            assert get_json(f"{bases[0]}/features/{user}")[0] == 200, user
        fb: dict[str, dict[str, Any]] = {}

        def rewarded() -> bool:
            fb.update((f["rec_id"], f) for f in read(s1, "feedback", 1.0))
            return all(decs[f"t{u}"]["rec_id"] in fb for u in range(len(USERS)))
        poll_until(rewarded, timeout=60, interval=1.0, message="feedback for the triggers")
    return fb, decs
