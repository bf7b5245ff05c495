"""`lamstream bench pipeline`: the worker against raw aiokafka and a naive Faust agent, one run.

All three consume the same pre-loaded topic of real events on the same broker, one after the
other, so the ratios compare like with like:
  (a) raw: aiokafka consume + orjson decode + produce passthrough (the broker/machine limit);
  (b) naive: a Faust agent with a table update and an awaited send per event;
  (c) lamstream: the real worker (validation, features table, predictor, decisions).
Rates are measured over the busy span (first record processed to last), so consumer-group
joins are not counted. Then (c) runs at a fixed offered load to measure end-to-end latency:
producer send -> recommendation received by a separate consumer.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from stream.settings import Settings


def load_payloads(data: str | None, n: int) -> list[tuple[bytes, bytes]]:
    from model.datasets import iter_payloads
    from stream.demo import default_data

    out: list[tuple[bytes, bytes]] = []
    path = data or str(default_data())
    while len(out) < n:
        before = len(out)
        for key, value in iter_payloads(path):
            if key is None:
                continue
            # a fresh id per copy so a file shorter than n is replayed as new events
            ev = orjson.loads(value)
            ev["event_id"] = f"{ev['event_id']}#{len(out)}"
            out.append((key.encode(), orjson.dumps(ev)))
            if len(out) >= n:
                break
        if len(out) == before:
            raise ValueError(f"no usable events in {path}")
    return out


def preload(settings: Settings, topic: str, payloads: list[tuple[bytes, bytes]]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(**settings.kafka_python_config(), linger_ms=20,
                             batch_size=256 * 1024, acks=1)
    for key, value in payloads:
        producer.send(topic, key=key, value=value)
    producer.flush(120)
    producer.close()


def create(settings: Settings, names: list[str]) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(**settings.kafka_python_config())
    try:
        admin.create_topics([NewTopic(n, settings.partitions, settings.replication_factor)
                             for n in names])
    finally:
        admin.close()


async def _raw(settings: Settings, topic: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=5000)
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, linger_ms=2,
                                max_batch_size=256 * 1024)
    await consumer.start()
    await producer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(settings.partitions)])
        out = f"{topic}.raw-out"
        seen = 0
        t0 = 0.0
        pending = []
        while seen < n:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                if records and not t0:
                    t0 = time.perf_counter()
                for r in records:
                    ev = orjson.loads(r.value)
                    pending.append(await producer.send(out, orjson.dumps(ev), key=r.key))
                    seen += 1
            if len(pending) > 20000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        return n / (time.perf_counter() - t0)
    finally:
        await consumer.stop()
        await producer.stop()


def _naive(settings: Settings, topic: str, n: int, tmp: Path) -> float:
    proc = subprocess.run(
        [sys.executable, "-m", "stream.bench_naive", settings.bootstrap, topic, str(n),
         str(tmp / "naive")], capture_output=True, text=True, timeout=900)
    # Faust's worker routes print() through its logger, so look in both streams
    found = re.search(r'\{"events":[^}]*\}', proc.stdout + proc.stderr)
    if found:
        return float(json.loads(found.group(0))["eps"])
    raise RuntimeError(f"naive Faust run failed: {proc.stderr[-1500:]}")


def _stats(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/api/stats", timeout=5) as r:
        return dict(json.loads(r.read()))


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def _latency_at_load(settings: Settings, s: Settings, payloads: list[tuple[bytes, bytes]],
                     rate: float, seconds: float) -> dict[str, float]:
    """Offered load `rate` ev/s for `seconds`; e2e = send time -> recommendation received."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    rec_topic = s.topic_prefix + "recommendations"
    consumer = KafkaConsumer(**s.kafka_python_config(), enable_auto_commit=False,
                             fetch_max_wait_ms=5)
    tps = [TopicPartition(rec_topic, p) for p in range(s.partitions)]
    consumer.assign(tps)
    from stream.admin import seek_to_end

    seek_to_end(consumer, tps)
    sent_at: dict[str, float] = {}
    lat: list[float] = []
    inside: list[float] = []  # the worker's own share: receipt -> publish
    done = threading.Event()

    def receive() -> None:
        while not done.is_set() or len(lat) < len(sent_at) * 0.5:
            for records in consumer.poll(timeout_ms=100).values():
                now = time.perf_counter()
                for r in records:
                    rec = orjson.loads(r.value)
                    t = sent_at.get(rec["event_id"])
                    if t is not None:
                        lat.append((now - t) * 1000)
                        inside.append(rec["latency_ms"])
            if done.is_set() and time.perf_counter() > deadline:
                break

    deadline = float("inf")
    th = threading.Thread(target=receive, daemon=True)
    th.start()
    producer = KafkaProducer(**s.kafka_python_config(), linger_ms=0, acks=1)
    total = int(rate * seconds)
    t0 = time.perf_counter()
    topic = s.topic_prefix + "events"
    for i in range(total):
        key, value = payloads[i % len(payloads)]
        ev = orjson.loads(value)
        ev["event_id"] = f"lat-{i}-{ev['event_id']}"
        sent_at[ev["event_id"]] = time.perf_counter()
        producer.send(topic, key=key, value=orjson.dumps(ev))
        ahead = (i + 1) / rate - (time.perf_counter() - t0)
        if ahead > 0:
            time.sleep(ahead)
    producer.flush()
    deadline = time.perf_counter() + 10
    done.set()
    th.join(15)
    consumer.close()
    producer.close()
    # only views/clicks trigger recommendations; the sample is the measured records
    return {"p50_ms": _percentile(lat, 0.5), "p99_ms": _percentile(lat, 0.99),
            "samples": len(lat), "worker_p50_ms": _percentile(inside, 0.5),
            "worker_p99_ms": _percentile(inside, 0.99)}


def run_pipeline_bench(settings: Settings, *, n_events: int, data: str | None,
                       log: Callable[[str], None], naive_events: int = 10000,
                       latency_rate: float = 2000.0, latency_seconds: float = 10.0
                       ) -> dict[str, Any]:
    from stream.admin import ensure_topics
    from stream.cli import broker_for
    from stream.demo import start_worker, stop_worker, wait_healthy

    tmp = Path(tempfile.mkdtemp(prefix="lamstream-bench-"))
    payloads = load_payloads(data, n_events)
    run_id = uuid.uuid4().hex[:6]
    with broker_for(settings) as base_settings:
        partitions = base_settings.partitions
        log(f"bench: {n_events} real events, {partitions} partitions, broker "
            f"{base_settings.bootstrap}")
        # (a) raw aiokafka
        raw_topic = f"bench-{run_id}-raw"
        create(base_settings, [raw_topic, raw_topic + ".raw-out"])
        preload(base_settings, raw_topic, payloads)
        raw_eps = asyncio.run(_raw(base_settings, raw_topic, n_events))
        log(f"(a) raw aiokafka passthrough: {raw_eps:,.0f} ev/s")
        # (b) naive Faust agent
        naive_n = min(naive_events, n_events)
        naive_topic = f"bench-{run_id}-naive"
        create(base_settings, [naive_topic, naive_topic + ".naive-out"])
        preload(base_settings, naive_topic, payloads[:naive_n])
        naive_eps = _naive(base_settings, naive_topic, naive_n, tmp)
        log(f"(b) naive Faust agent: {naive_eps:,.0f} ev/s ({naive_n} events)")
        # (c) the lamstream worker
        s = base_settings.model_copy(update={
            "topic_prefix": f"bench-{run_id}-ls.", "app_id": f"bench-{run_id}",
            "data_dir": tmp / "worker"})
        ensure_topics(s)
        preload(s, s.topic_prefix + "events", payloads)
        base = f"http://127.0.0.1:{s.web_port}"
        proc = start_worker(s, tmp / "worker", tmp / "worker.log",
                            extra_env={"LAMSTREAM_MODEL_NAME": "baseline"})
        try:
            wait_healthy(base, proc, 120, tmp / "worker.log")
            deadline = time.monotonic() + 600
            st = _stats(base)
            while st["events"] < n_events and time.monotonic() < deadline:
                time.sleep(0.25)
                st = _stats(base)
            if st["events"] < n_events:
                raise RuntimeError(f"worker processed {st['events']} of {n_events} events")
            ls_eps = st["events"] / (st["last_batch_at"] - st["first_batch_at"])
            log(f"(c) lamstream worker: {ls_eps:,.0f} ev/s "
                f"({st['recommendations']} recommendations, {st['dlq']} DLQ)")
            lat = _latency_at_load(settings, s, payloads, latency_rate, latency_seconds)
            log(f"(c) at {latency_rate:.0f} ev/s offered: e2e p50 {lat['p50_ms']:.1f} ms, p99 "
                f"{lat['p99_ms']:.1f} ms over {lat['samples']} recommendations (inside the "
                f"worker, receipt to publish: p50 {lat['worker_p50_ms']:.1f} ms, p99 "
                f"{lat['worker_p99_ms']:.1f} ms)")
        finally:
            stop_worker(proc)
    return {
        "raw_eps": round(raw_eps, 1), "naive_eps": round(naive_eps, 1),
        "lamstream_eps": round(ls_eps, 1),
        "ratio_vs_naive": round(ls_eps / naive_eps, 2),
        "ratio_vs_raw": round(ls_eps / raw_eps, 3),
        "p50_ms": round(lat["p50_ms"], 2), "p99_ms": round(lat["p99_ms"], 2),
        "worker_p50_ms": round(lat["worker_p50_ms"], 2),
        "worker_p99_ms": round(lat["worker_p99_ms"], 2),
        "events": n_events, "naive_events": naive_n, "partitions": partitions,
        "latency_offered_eps": latency_rate, "latency_samples": lat["samples"],
        "predictor": "baseline (online popularity + co-visitation, rule risk)",
    }
