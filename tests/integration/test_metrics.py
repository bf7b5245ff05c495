"""/metrics of a running worker after a demo-like stream: every metric, with the right values."""

from __future__ import annotations

import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.devtools.procs import start_worker, stop_worker, wait_healthy
from stream.kafka.admin import ensure_topics
from stream.settings import Settings
from tests.helpers import poll_until
from tests.integration.test_worker import (
    MALFORMED,
    T0,
    encode,
    get_json,
    make_events,
    send,
)

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
TOKEN = "metrics-test-token"


def scrape(base: str) -> tuple[Samples, set[str], str, str]:
    """{(sample name, sorted labels): value}, the families, the content type, the text."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:  # no token: stays open
        text = r.read().decode()
        kind = r.headers["Content-Type"]
    samples: Samples = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, families, kind, text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_metrics_after_a_demo_like_run(settings_factory: Callable[..., Settings],
                                       tmp_path: Path) -> None:
    s = settings_factory(store="rocksdb", partitions=3)
    ensure_topics(s)
    events = make_events(1500, users=30, seed=11)
    dups = events[::10]
    # one user whose last three events are more than the allowed lateness (60 s) older
    late: list[dict[str, Any]] = [
        {"event_id": f"late-{i}", "user_id": "late-user", "type": "view", "item_id": "i1",
         "ts": ts} for i, ts in enumerate((T0 + 600_000, T0, T0 + 1000, T0 + 2000))]
    burst = [{"event_id": f"b{i}", "user_id": "mallory", "type": "purchase",
              "item_id": f"gift-{i % 2}", "ts": T0 + i * 5000, "price": 300.0,
              "device_id": f"d{i % 5}", "ip": f"10.1.{i}.9"} for i in range(8)]
    records = (encode(events) + encode(late) + encode(burst)
               + [(k, v) for _, k, v in MALFORMED] + encode(dups))
    valid = events + late + burst
    recommended = sum(e["type"] in ("view", "click") for e in valid)
    prefix = s.topic_prefix
    base = f"http://127.0.0.1:{s.web_port}"

    log = tmp_path / "worker.log"
    proc = start_worker(s, s.data_dir, log, extra_env={
        "LAMSTREAM_STORE": "rocksdb", "LAMSTREAM_API_TOKEN": TOKEN})
    try:
        wait_healthy(base, proc, 90, log)
        send(s, records)
        poll_until(lambda: get_json(f"{base}/api/stats")[1]["events"] >= len(records),
                   timeout=60, message="worker processed everything")
        # lag is measured against what the consumer has fetched: 0 once it caught up
        poll_until(lambda: all(v == 0 for (n, _), v in scrape(base)[0].items()
                               if n == "lamstream_consumer_lag"), timeout=20)
        samples, families, kind, text = scrape(base)
        health = get_json(f"{base}/health")[1]
        assert get_json(f"{base}/features/u1")[0] == 401  # user data needs the token
    finally:
        stop_worker(proc)

    assert kind.startswith("text/plain; version=0.0.4")
    assert {"lamstream_events_in", "lamstream_events_out", "lamstream_dlq",
            "lamstream_duplicates", "lamstream_late_events", "lamstream_consumer_lag",
            "lamstream_batch_size", "lamstream_inference_seconds",
            "lamstream_e2e_latency_seconds", "lamstream_model_version_info",
            "lamstream_table_keys", "lamstream_risk_alerts"} <= families

    # events in / out per topic
    assert value(samples, "lamstream_events_in_total", topic=prefix + "events") == len(records)
    assert value(samples, "lamstream_events_out_total",
                 topic=prefix + "recommendations") == recommended
    alerts = value(samples, "lamstream_events_out_total", topic=prefix + "risk-alerts")
    assert alerts >= 1 and alerts == value(samples, "lamstream_risk_alerts_total")
    assert value(samples, "lamstream_events_out_total",
                 topic=prefix + "events.dlq") == len(MALFORMED)
    # DLQ by error kind, duplicates, late events
    for error_kind, n in Counter(k for k, _, _ in MALFORMED).items():
        assert value(samples, "lamstream_dlq_total", error_kind=error_kind) == n
    assert value(samples, "lamstream_duplicates_total") == len(dups)
    assert value(samples, "lamstream_late_events_total") == 3
    # consumer lag: one gauge per partition of the events topic
    lag = {dict(labels)["partition"] for (name, labels) in samples
           if name == "lamstream_consumer_lag"}
    assert lag == {"0", "1", "2"}
    # batch sizes: every record was in exactly one batch
    batches = value(samples, "lamstream_batch_size_count")
    assert 1 <= batches <= len(records)
    assert value(samples, "lamstream_batch_size_sum") == len(records)
    assert value(samples, "lamstream_batch_size_bucket", le="+Inf") == batches
    # inference: one call per batch with valid events, each well under a second here
    calls = value(samples, "lamstream_inference_seconds_count")
    assert 1 <= calls <= batches
    assert 0 < value(samples, "lamstream_inference_seconds_sum") < calls * 1.0
    # end-to-end latency: one observation per recommendation, all within 5 s
    e2e = value(samples, "lamstream_e2e_latency_seconds_count")
    assert e2e == recommended
    assert value(samples, "lamstream_e2e_latency_seconds_bucket", le="5.0") == e2e
    assert 0 < value(samples, "lamstream_e2e_latency_seconds_sum") < e2e * 5.0
    # the model in service, as /health names it
    assert value(samples, "lamstream_model_version_info", model=health["model"],
                 version=health["model_version"]) == 1
    # table size: the users this worker holds (it owns every partition)
    users = {e["user_id"] for e in valid}
    assert value(samples, "lamstream_table_keys") == len(users)
    assert TOKEN not in text
