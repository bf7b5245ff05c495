"""The worker end to end on a real broker: decisions, DLQ, dedupe, restarts, two workers."""

from __future__ import annotations

import base64
import json
import random
import signal
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.client import EventProducer, PredictionSubscriber
from stream.devtools.procs import start_worker, stop_worker, wait_healthy
from stream.kafka.admin import consumer_lag, ensure_topics
from stream.kafka.broker import free_port
from stream.schemas import DlqRecord, Recommendation, RiskAlert
from stream.settings import Settings
from tests.helpers import poll_until

pytestmark = pytest.mark.integration

T0 = 1_764_000_000_000
TYPES = ("view", "click", "add_to_cart", "purchase")


def make_events(n: int, users: int, seed: int) -> list[dict[str, Any]]:
    """Valid events for `users` users, with event times shuffled up to 30 s out of order."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = T0 + i * 100 + rng.randint(-30_000, 0)
        out.append({"event_id": f"s{seed}-e{i}", "user_id": f"u{rng.randrange(users)}",
                    "type": rng.choices(TYPES, weights=(70, 15, 10, 5))[0],
                    "item_id": f"i{rng.randrange(60)}", "ts": ts,
                    "price": round(rng.uniform(1, 50), 2)})
    return out


def offline_counts(events: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    seen: set[str] = set()
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for ev in events:
        if ev["event_id"] in seen:
            continue
        seen.add(ev["event_id"])
        counts[ev["user_id"]][ev["type"]] += 1
    return {u: {t: c[t] for t in TYPES} for u, c in counts.items()}


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@contextmanager
def worker(settings: Settings, tmp: Path, name: str = "w") -> Iterator[Any]:
    proc = start_worker(settings, settings.data_dir, tmp / f"{name}.log")
    try:
        wait_healthy(f"http://127.0.0.1:{settings.web_port}", proc, 90, tmp / f"{name}.log")
        yield proc
    finally:
        stop_worker(proc)


def send(settings: Settings, records: list[tuple[bytes | None, bytes]]) -> None:
    with EventProducer(settings, validate=False) as p:
        for key, value in records:
            p.send_raw(value, key)


def encode(events: list[dict[str, Any]]) -> list[tuple[bytes | None, bytes]]:
    return [(ev["user_id"].encode(), orjson.dumps(ev)) for ev in events]


def wait_exact_counts(base: str, events: list[dict[str, Any]], timeout: float = 90.0) -> None:
    """Until the worker at `base` answers every user's lifetime counts as offline_counts."""
    want = offline_counts(events)

    def exact() -> bool:
        return all(get_json(f"{base}/features/{u}")[1].get("counts") == c
                   for u, c in want.items())
    poll_until(exact, timeout=timeout, interval=0.5,
               message="lifetime counts equal the offline counts")


def wait_sharing(settings: Settings, bases: list[str]) -> None:
    """Until the workers at `bases` hold disjoint, non-empty sets of events partitions."""
    def shared() -> bool:
        parts = [{p for p in get_json(f"{b}/health")[1]["assignment"]
                  if p.startswith(settings.topic_prefix + "events:")} for b in bases]
        return all(parts) and not set.intersection(*parts)
    poll_until(shared, timeout=60, interval=0.5,
               message="the workers share the events partitions")


MALFORMED: list[tuple[str, bytes | None, bytes]] = [
    ("not_json", b"u1", b"{this is not json"),
    ("schema", b"u1", b'["a", "list"]'),
    ("schema", b"u1", orjson.dumps({"event_id": "m1", "user_id": 7, "type": "view",
                                    "item_id": "i", "ts": T0})),
    ("schema", b"u1", orjson.dumps({"event_id": "m2", "user_id": "u1", "type": "view",
                                    "ts": T0})),
    ("schema", b"u1", orjson.dumps({"event_id": "m3", "user_id": "u1", "type": "teleport",
                                    "item_id": "i", "ts": T0})),
    ("schema", b"u1", orjson.dumps({"event_id": "m4", "user_id": "u1", "type": "purchase",
                                    "item_id": "i", "ts": T0, "price": -1})),
    ("oversized", b"u1", orjson.dumps({"event_id": "m5", "user_id": "u1", "type": "view",
                                       "item_id": "i", "ts": T0, "attrs": {"x": "y" * 70000}})),
    ("key_mismatch", b"u2", orjson.dumps({"event_id": "m6", "user_id": "u1", "type": "view",
                                          "item_id": "i", "ts": T0})),
]


def test_valid_duplicate_late_and_malformed_events(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    s = settings_factory(store="rocksdb")
    ensure_topics(s)
    events = make_events(600, users=25, seed=1)
    dups = events[::7]  # producer retries: same ids again, later
    records = encode(events) + [(k, v) for _, k, v in MALFORMED] + encode(dups)
    base = f"http://127.0.0.1:{s.web_port}"
    with worker(s, tmp_path):
        send(s, records)
        want = offline_counts(events)
        poll_until(lambda: get_json(f"{base}/api/stats")[1]["events"] >= len(records),
                   timeout=60, message="worker processed everything")
        for user, counts in want.items():
            status, body = get_json(f"{base}/features/{user}")
            assert status == 200, body
            assert body["counts"] == counts, user
            assert body["events_total"] == sum(counts.values())
        assert get_json(f"{base}/features/nobody")[0] == 404
        stats = get_json(f"{base}/api/stats")[1]
        assert stats["dlq"] == len(MALFORMED)
        assert stats["duplicates"] == len(dups)
        # every input record is committed, the DLQ'd and duplicate ones included: no offset
        # gap holds a partition's commits back (Faust #606), so a restart re-reads nothing
        events_topic = s.topic_prefix + "events"
        poll_until(lambda: set(consumer_lag(s, s.app_id, events_topic).values()) == {0},
                   timeout=30, message="the worker committed every input record")

        dlq_topic = s.topic_prefix + "events.dlq"
        got: list[DlqRecord] = []
        with PredictionSubscriber(s, topics=[dlq_topic], from_beginning=True) as sub:
            poll_until(lambda: got.extend(r.value for r in sub.poll(0.5)  # type: ignore[misc]
                                          if isinstance(r.value, DlqRecord)) or
                       len(got) >= len(MALFORMED), timeout=30)
        assert sorted(r.raw_bytes() for r in got) == sorted(v for _, _, v in MALFORMED)
        assert Counter(r.error_kind for r in got) == Counter(k for k, _, _ in MALFORMED)
        assert all(r.error and r.topic == s.topic_prefix + "events" for r in got)
        assert all(base64.b64decode(r.key or "") in (b"u1", b"u2") for r in got)

        # a recommendation for every distinct valid view/click, none for the rest
        triggers = {e["event_id"] for e in events if e["type"] in ("view", "click")}
        recs: dict[str, Recommendation] = {}
        with PredictionSubscriber(s, from_beginning=True) as sub:
            def collect() -> bool:
                for r in (m.value for m in sub.poll(0.5)):
                    if isinstance(r, Recommendation):
                        recs[r.event_id] = r
                return len(recs) >= len(triggers)
            poll_until(collect, timeout=30)
        assert set(recs) == triggers
        assert all(len(r.items) <= s.top_k for r in recs.values())
        assert sum(len(r.items) == s.top_k for r in recs.values()) > 0.9 * len(recs)
        sample = next(iter(recs.values()))
        assert sample.model_version and sample.latency_ms >= 0
        by_id = {e["event_id"]: e for e in events}
        assert all(r.user_id == by_id[r.event_id]["user_id"] for r in recs.values())
        assert all(by_id[r.event_id]["item_id"] not in {i.item_id for i in r.items}
                   for r in recs.values())


def test_risk_alert_explains_a_purchase_burst(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    s = settings_factory()
    ensure_topics(s)
    burst = [{"event_id": f"b{i}", "user_id": "mallory", "type": "purchase",
              "item_id": f"gift-{i % 2}", "ts": T0 + i * 5000, "price": 300.0,
              "device_id": f"d{i % 5}", "ip": f"10.1.{i}.9"} for i in range(8)]
    with worker(s, tmp_path):
        send(s, encode(make_events(100, users=10, seed=3)) + encode(burst))
        alerts: list[RiskAlert] = []
        with PredictionSubscriber(s, from_beginning=True) as sub:
            poll_until(lambda: alerts.extend(r.value for r in sub.poll(0.5)  # type: ignore[misc]
                                             if isinstance(r.value, RiskAlert)) or
                       any(a.user_id == "mallory" for a in alerts), timeout=40)
    a = next(a for a in alerts if a.user_id == "mallory")
    assert a.score >= a.threshold
    names = {r.feature for r in a.reasons}
    assert names & {"count_purchase_1m", "distinct_devices_24h", "spend_z_1h"}
    assert a.reasons == sorted(a.reasons, key=lambda r: -r.contribution)


def test_sigkill_mid_stream_then_restart_gives_exact_counts(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    s = settings_factory(store="rocksdb")
    ensure_topics(s)
    events = make_events(3000, users=20, seed=2)
    base = f"http://127.0.0.1:{s.web_port}"
    proc = start_worker(s, s.data_dir, tmp_path / "w1.log")
    try:
        wait_healthy(base, proc, 90, tmp_path / "w1.log")
        send(s, encode(events[:2000]))
        poll_until(lambda: get_json(f"{base}/api/stats")[1]["events"] >= 700, timeout=60)
    finally:
        proc.send_signal(signal.SIGKILL)  # no graceful anything
        proc.wait()
    # more events (and replays of old ones) arrive while it is down
    send(s, encode(events[2000:]) + encode(events[100:400]))
    with worker(s, tmp_path, "w2"):
        wait_exact_counts(base, events)


def test_two_workers_split_partitions_without_double_counting(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    s1 = settings_factory(store="rocksdb", data_dir=tmp_path / "d1")
    s2 = s1.model_copy(update={"data_dir": tmp_path / "d2", "web_port": free_port()})
    ensure_topics(s1)
    events = make_events(2000, users=40, seed=4)
    with worker(s1, tmp_path, "a"), worker(s2, tmp_path, "b"):
        bases = [f"http://127.0.0.1:{x.web_port}" for x in (s1, s2)]
        wait_sharing(s1, bases)
        send(s1, encode(events))
        want = offline_counts(events)

        def exact() -> bool:
            for user, counts in want.items():
                answers = [get_json(f"{b}/features/{user}?local=1") for b in bases]
                owners = [body for code, body in answers if code == 200]
                if len(owners) != 1 or owners[0]["counts"] != counts:
                    return False
            return True
        poll_until(exact, timeout=60, interval=0.5,
                   message="each user counted exactly once, by exactly one worker")
        processed = sum(get_json(f"{b}/api/stats")[1]["events"] for b in bases)
        assert processed == len(events)

        # interactive queries: either worker answers for every user, the other one's too
        served_by: Counter[str] = Counter()
        for base in bases:
            for user, counts in want.items():
                with urllib.request.urlopen(f"{base}/features/{user}", timeout=10) as r:
                    assert json.loads(r.read())["counts"] == counts
                    served_by[r.headers["X-Lamstream-Worker"]] += 1
        assert set(served_by) == set(bases)  # both workers' states were read, through both
        code, body = get_json(f"{bases[0]}/features/nobody")
        assert code == 404 and "unknown user 'nobody'" in body["error"]
