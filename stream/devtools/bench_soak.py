"""`lamstream bench soak`: events at a steady rate for minutes; RSS, lag and latency per minute.

What a long run shows that a short benchmark cannot: memory that creeps up (a cache without a
bound, a queue that never drains), lag that grows because the worker falls a little behind,
and latency that degrades as state accumulates. One worker process on the configured broker
(or a fresh embedded one), the events of `--data` replayed under fresh ids at `--rate` for
`--minutes`; each minute the worker's RSS (from /proc), its group's lag on the events topic
(end offset minus committed), the end-to-end p50/p99 of that minute's recommendations, the
worker's /health status and, on the embedded broker, the broker's RSS.

Each pass over the file is a new population of users (ids suffixed `~pass`), as a shop sees
new visitors every day: replaying the same users instead lengthens every user's history
at each pass (32,641 users over 50,000 events, 24 passes in 20 minutes), so the state
itself grows and hides whether anything else does.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from model.stats import percentile
from model.train.progress import step
from stream.devtools.bench_pipeline import LatencyObserver
from stream.devtools.procs import (
    broker_with_pid,
    get_json_status,
    start_worker,
    stop_worker,
    wait_healthy,
)
from stream.devtools.replay import load_payloads
from stream.errors import UsageError
from stream.kafka.admin import consumer_lag, ensure_topics
from stream.settings import Settings

__all__ = ["WARMUP_MINUTES", "rss_mb", "run_soak", "summarise"]

# RSS growth is judged after this. What fills first, by design bounded: the tables' RocksDB
# write buffers and block caches (8 partitions x (2 x LAMSTREAM_ROCKSDB_MEMTABLE_MB +
# LAMSTREAM_ROCKSDB_CACHE_MB), 128 MiB at the defaults), the dashboard's two generations of
# each user's latest decision, the online co-visitation lists. Measured at 1,000 ev/s
# (docs/benchmarks/soak-2026-12.md): +85 to +105 MiB over the first 6 minutes, then
# within 25-30 MiB for the next 14.
WARMUP_MINUTES = 5
# The offering client batches like an application sending 1,000 ev/s would (Kafka clients'
# linger.ms is 5 ms by default, batching tens of events at this rate in one client). At 5 ms
# nearly every event became a batch of its own on the embedded broker, and tansu's memory
# engine lists every stored batch of a partition on each fetch (tansu-storage dynostore
# `fetch`): a bare consumer's latency grew from 17 to 330 ms as 1.5 GB accumulated, and the
# worker's lag with it (docs/benchmarks/soak-2026-12.md).
SOAK_LINGER_MS = 50


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process in MiB (Linux /proc), None where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        return None
    return None


@dataclass
class _Soak:
    settings: Settings
    pid: int
    payloads: list[tuple[bytes, bytes]]
    rate: float
    minutes: int
    log: Any
    broker_pid: int | None = None


def _minute_sample(soak: _Soak, minute: int, obs: LatencyObserver, sent: int) -> dict[str, Any]:
    lag = consumer_lag(soak.settings, soak.settings.app_id,
                       soak.settings.topic_prefix + "events")
    p50, p99 = percentile(obs.lat, 0.5), percentile(obs.lat, 0.99)
    health = get_json_status(f"http://127.0.0.1:{soak.settings.web_port}/health")[1] or {}
    sample = {"minute": minute, "rss_mb": rss_mb(soak.pid), "lag": sum(lag.values()),
              "sent": sent, "recommendations": len(obs.lat),
              "p50_ms": None if p50 is None else round(p50, 1),
              "p99_ms": None if p99 is None else round(p99, 1),
              "health": health.get("status", "unreachable"),
              "broker_rss_mb": rss_mb(soak.broker_pid) if soak.broker_pid else None}
    soak.log(f"minute {minute}: rss {sample['rss_mb']} MiB, lag {sample['lag']}, "
             f"p50 {sample['p50_ms']} / p99 {sample['p99_ms']} ms over "
             f"{sample['recommendations']} recommendations, health {sample['health']}, "
             f"broker rss {sample['broker_rss_mb']} MiB")
    step(soak.log, minute, soak.minutes, f"lag {sample['lag']}")
    obs.lat.clear()
    obs.inside.clear()
    return sample


async def _offer_minutes(soak: _Soak) -> list[dict[str, Any]]:
    """Send at soak.rate for soak.minutes, observing recommendations; a sample per minute."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # heavy import

    s = soak.settings
    consumer = AIOKafkaConsumer(**s.aiokafka_config(), enable_auto_commit=False,
                                fetch_max_wait_ms=5, max_poll_records=5000)
    producer = AIOKafkaProducer(**s.aiokafka_config(), linger_ms=SOAK_LINGER_MS, acks=1)
    await consumer.start()
    await producer.start()
    obs, samples, topic = LatencyObserver(), [], s.topic_prefix + "events"
    try:
        consumer.assign([TopicPartition(s.topic_prefix + "recommendations", p)
                         for p in range(s.partitions)])
        await consumer.seek_to_end()
        async with obs.watching(consumer):
            t0, i = time.perf_counter(), 0
            for minute in range(1, soak.minutes + 1):
                while (elapsed := time.perf_counter() - t0) < minute * 60.0:
                    key, value = soak.payloads[i % len(soak.payloads)]
                    ev = orjson.loads(value)
                    ev["event_id"] = f"soak-{i}-{ev['event_id']}"
                    if (visit := i // len(soak.payloads)) > 0:  # a new population per pass
                        ev["user_id"] = f"{ev['user_id']}~{visit}"
                        key = ev["user_id"].encode()
                    if ev.get("type") in s.recommend_on:
                        obs.sent_at[ev["event_id"]] = time.perf_counter()
                    await producer.send(topic, orjson.dumps(ev), key=key)
                    i += 1
                    ahead = i / soak.rate - elapsed
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                samples.append(await asyncio.to_thread(_minute_sample, soak, minute, obs, i))
    finally:
        await consumer.stop()
        await producer.stop()
    return samples


def summarise(samples: list[dict[str, Any]], warmup: int = WARMUP_MINUTES) -> dict[str, Any]:
    """RSS growth after warm-up (percent of the first post-warm-up sample), the largest lag
    and the worst minute's p99."""
    after = [x["rss_mb"] for x in samples if x["minute"] > warmup and x["rss_mb"] is not None]
    growth = None
    if len(after) >= 2:
        growth = round(100.0 * (after[-1] - after[0]) / after[0], 2)
    p99s = [x["p99_ms"] for x in samples if x["p99_ms"] is not None]
    return {"rss_growth_after_warmup_pct": growth, "warmup_minutes": warmup,
            "max_lag": max((x["lag"] for x in samples), default=None),
            "final_lag": samples[-1]["lag"] if samples else None,
            "worst_minute_p99_ms": max(p99s) if p99s else None,
            "minutes_not_ok": [x["minute"] for x in samples if x.get("health", "ok") != "ok"]}


def run_soak(settings: Settings, *, minutes: int, rate: float, data: str | None, log: Any,
             warmup: int = WARMUP_MINUTES) -> dict[str, Any]:
    """Start a broker if needed and one worker with its defaults, soak it, stop it."""
    if minutes < 1 or rate <= 0:
        raise UsageError("--minutes must be >= 1 and --rate > 0")
    tmp = Path(tempfile.mkdtemp(prefix="lamstream-soak-"))
    payloads = load_payloads(data, 50_000)
    run_id = uuid.uuid4().hex[:6]
    with broker_with_pid(settings, log=log) as (base, broker_pid):
        s = base.model_copy(update={"topic_prefix": f"soak-{run_id}.",
                                    "app_id": f"soak-{run_id}", "data_dir": tmp / "worker"})
        ensure_topics(s)
        proc = start_worker(s, tmp / "worker", tmp / "worker.log")
        try:
            wait_healthy(f"http://127.0.0.1:{s.web_port}", proc, 120, tmp / "worker.log")
            log(f"soak: {minutes} min at {rate:.0f} ev/s, worker pid {proc.pid}")
            samples = asyncio.run(_offer_minutes(_Soak(s, proc.pid, payloads, rate, minutes,
                                                       log, broker_pid)))
        finally:
            stop_worker(proc)
    return {"minutes": minutes, "rate": rate, "samples": samples, **summarise(samples, warmup),
            "predictor": "the worker's default (LAMSTREAM_MODEL_NAME)",
            "worker_log": str(tmp / "worker.log")}
