"""`lamstream bench pipeline`: the worker against raw aiokafka and a naive Faust agent, one run.

All three consume the same pre-loaded topic of real events on the same broker, one after the
other, so the ratios compare like with like:
  (a) raw: aiokafka consume + orjson decode + produce passthrough (the broker/machine limit);
  (b) naive: a Faust agent with a table update and an awaited send per event;
  (c) lamstream: the real worker (validation, features table, predictor, decisions).
The worker serves `--predictor` (default auto: what a worker serves by default, from
DATA_DIR's registry and LAMSTREAM_MODEL_NAME; hybrid; baseline, the online co-visitation
baseline; both: the hybrid and the baseline, one worker phase each, every figure named).
Rates are measured over the busy span (first record processed to last), so consumer-group
joins are not counted. Then (c) runs at a fixed offered load to measure end-to-end latency:
producer send -> recommendation received by a separate consumer; and (d) the same load and
observer through a bare passthrough process (stream.devtools.bench_floor) gives the latency floor of
this broker and machine, which the worker's figure includes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from model.registry import ModelRegistry
from model.stats import percentile
from model.train.progress import step
from stream.devtools.procs import (
    broker_for,
    get_json,
    link_models,
    start_worker,
    stop_worker,
    wait_healthy,
)
from stream.devtools.replay import default_data, load_payloads, preload
from stream.errors import InfraError, UsageError
from stream.kafka.admin import end_offsets, ensure_topics
from stream.settings import Settings
from stream.topics import table_changelog, topics_for

Log = Callable[[str], None]
PREDICTORS = ("auto", "hybrid", "baseline", "both")


def create(settings: Settings, names: list[str], configs: dict[str, str] | None = None
           ) -> None:
    """Topics `names` with settings' partitions and replication (and topic `configs`)."""
    admin = KafkaAdminClient(**settings.kafka_python_config())
    try:
        admin.create_topics([NewTopic(n, settings.partitions, settings.replication_factor,
                                      topic_configs=configs or {}) for n in names])
    finally:
        admin.close()


async def _raw(settings: Settings, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(**settings.aiokafka_config(), enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=5000)
    producer = AIOKafkaProducer(**settings.aiokafka_config(), linger_ms=2,
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
        [sys.executable, "-m", "stream.devtools.bench_naive", settings.bootstrap, topic, str(n),
         str(tmp / "naive")], capture_output=True, text=True, timeout=900)
    # Faust's worker routes print() through its logger, so look in both streams
    found = re.search(r'\{"events":[^}]*\}', proc.stdout + proc.stderr)
    if found:
        return float(json.loads(found.group(0))["eps"])
    raise InfraError(f"naive Faust run failed: {proc.stderr[-1500:]}")


def _latency_at_load(s: Settings, payloads: list[tuple[bytes, bytes]], rate: float,
                     seconds: float, out_topic: str | None = None) -> dict[str, Any]:
    """Offered load `rate` ev/s for `seconds` on s's events topic; e2e = send time -> the
    record of the same event id received on `out_topic`: the recommendations (events of the
    types in s.recommend_on have one), or with a topic given, a copy of every event."""
    every_event = out_topic is not None
    return asyncio.run(_latency_async(s, payloads, rate, seconds,
                                      out_topic or s.topic_prefix + "recommendations",
                                      every_event))


async def _latency_async(s: Settings, payloads: list[tuple[bytes, bytes]], rate: float,
                         seconds: float, out_topic: str, every_event: bool
                         ) -> dict[str, Any]:
    """The load generator and the observer as one asyncio client (aiokafka): a producer paced
    to `rate` and a consumer of `out_topic`, each record matched to its send time by event id.
    The observer asks the broker for records no more than 5 ms late (tansu holds a fetch that
    long even when records are waiting), so the figure is the pipeline's, not the client's."""
    consumer = AIOKafkaConsumer(**s.aiokafka_config(), enable_auto_commit=False,
                                fetch_max_wait_ms=5, max_poll_records=5000)
    producer = AIOKafkaProducer(**s.aiokafka_config(), linger_ms=0, acks=1)
    await consumer.start()
    await producer.start()
    obs = LatencyObserver()
    try:
        consumer.assign([TopicPartition(out_topic, p) for p in range(s.partitions)])
        await consumer.seek_to_end()
        async with obs.watching(consumer):
            expected = await _offer(s, producer, payloads, rate, seconds, every_event,
                                    obs.sent_at)
            deadline = time.perf_counter() + 10
            while len(obs.lat) < expected and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
    finally:
        await consumer.stop()
        await producer.stop()
    # only some event types trigger recommendations; the sample is the measured records
    return {"p50_ms": percentile(obs.lat, 0.5), "p99_ms": percentile(obs.lat, 0.99),
            "samples": len(obs.lat), "worker_p50_ms": percentile(obs.inside, 0.5),
            "worker_p99_ms": percentile(obs.inside, 0.99)}


@dataclass
class LatencyObserver:
    """Send times by event id, and the latencies of the records seen on the output topic."""

    sent_at: dict[str, float] = field(default_factory=dict)
    lat: list[float] = field(default_factory=list)
    inside: list[float] = field(default_factory=list)  # the worker's share: receipt -> publish

    @contextlib.asynccontextmanager
    async def watching(self, consumer: Any) -> AsyncIterator[None]:
        """Match the records `consumer` receives while the body runs."""
        rx = asyncio.create_task(self.receive(consumer))
        try:
            yield
        finally:
            rx.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rx

    async def receive(self, consumer: Any) -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batches.values():
                for r in records:
                    rec = orjson.loads(r.value)
                    t = self.sent_at.pop(rec["event_id"], None)
                    if t is not None:
                        self.lat.append((now - t) * 1000)
                        if "latency_ms" in rec:
                            self.inside.append(rec["latency_ms"])


async def _offer(s: Settings, producer: Any, payloads: list[tuple[bytes, bytes]], rate: float,
                 seconds: float, every_event: bool, sent_at: dict[str, float]) -> int:
    """Send `rate` events a second for `seconds`, each under a fresh id whose send time goes
    into `sent_at`; returns how many output records to expect."""
    topic = s.topic_prefix + "events"
    t0 = time.perf_counter()
    expected = 0
    for i in range(int(rate * seconds)):
        key, value = payloads[i % len(payloads)]
        ev = orjson.loads(value)
        ev["event_id"] = f"lat-{i}-{ev['event_id']}"
        if every_event or ev.get("type") in s.recommend_on:
            expected += 1
        sent_at[ev["event_id"]] = time.perf_counter()
        await producer.send(topic, orjson.dumps(ev), key=key)
        ahead = (i + 1) / rate - (time.perf_counter() - t0)
        if ahead > 0:
            await asyncio.sleep(ahead)
    await producer.flush()
    return expected


def _floor_latency(base: Settings, run_id: str, fetch_wait_ms: int,
                   payloads: list[tuple[bytes, bytes]], rate: float, seconds: float, tmp: Path
                   ) -> dict[str, Any]:
    """Latency at `rate` through devtools.bench_floor (consume, forward, nothing else), with the
    worker's fetch wait, in its own process as the worker is."""
    s = base.model_copy(update={"topic_prefix": f"bench-{run_id}-floor."})
    events, out = s.topic_prefix + "events", s.topic_prefix + "out"
    create(s, [events, out])
    log = (tmp / "floor.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "stream.devtools.bench_floor", s.bootstrap,
                             events, out, str(fetch_wait_ms)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            log.seek(0)
            if "ready" in log.read():
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise InfraError(f"the floor passthrough did not start: {log.read()[-1500:]}")
            time.sleep(0.1)
        return _latency_at_load(s, payloads, rate, seconds, out_topic=out)
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@dataclass(frozen=True)
class BenchRun:
    """What every phase of one bench run shares."""

    base: Settings  # on the broker, before any phase's topic prefix
    payloads: list[tuple[bytes, bytes]]
    run_id: str
    tmp: Path
    log: Log
    models: Path | None = None  # the registry the workers read (None: an empty one)


def _raw_phase(run: BenchRun) -> float:
    """(a) raw aiokafka: consume, decode, produce; the broker and machine limit."""
    topic = f"bench-{run.run_id}-raw"
    create(run.base, [topic, topic + ".raw-out"])
    preload(run.base, topic, run.payloads)
    eps = asyncio.run(_raw(run.base, topic, len(run.payloads)))
    run.log(f"(a) raw aiokafka passthrough: {eps:,.0f} ev/s")
    return eps


def _naive_phase(run: BenchRun, n: int) -> float:
    """(b) a naive Faust agent over the first `n` events."""
    topic = f"bench-{run.run_id}-naive"
    create(run.base, [topic, topic + ".naive-out"])
    preload(run.base, topic, run.payloads[:n])
    eps = _naive(run.base, topic, n, run.tmp)
    run.log(f"(b) naive Faust agent: {eps:,.0f} ev/s ({n} events)")
    return eps


def bytes_published(s: Settings, topics: list[str], timeout: float = 60.0) -> dict[str, int]:
    """Key + value bytes of every record in each topic, read from the start to its end as a
    consumer receives them (record headers and batch framing not counted)."""
    from kafka import KafkaConsumer, TopicPartition

    ends = {t: end_offsets(s, t) for t in topics}
    out = dict.fromkeys(topics, 0)
    consumer = KafkaConsumer(**s.kafka_python_config(), enable_auto_commit=False,
                             max_partition_fetch_bytes=8 * 1024 * 1024)
    try:
        parts = [TopicPartition(t, p) for t in topics for p, end in ends[t].items() if end]
        if not parts:
            return out
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        left = {tp: ends[tp.topic][tp.partition] for tp in parts}
        deadline = time.monotonic() + timeout
        while left and time.monotonic() < deadline:
            for tp, records in consumer.poll(500, max_records=20_000).items():
                for r in records:
                    out[tp.topic] += len(r.value or b"") + len(r.key or b"")
                if records and records[-1].offset + 1 >= left.get(tp, 0):
                    left.pop(tp, None)
        if left:
            raise InfraError(f"could not read {len(left)} partitions to their end")
    finally:
        consumer.close()
    return out


def _bytes_per_event(s: Settings, n: int) -> dict[str, float]:
    t = topics_for(s)
    outputs = [x.name for x in (t.recommendations, t.decisions, t.risk_alerts, t.dlq)]
    changelog = table_changelog(s, "features")
    got = bytes_published(s, [*outputs, changelog])
    return {"bytes_in_per_event": 0.0,
            "bytes_out_per_event": round(sum(got[x] for x in outputs) / n, 1),
            "decision_bytes_per_event": round(got[t.decisions.name] / n, 1),
            "changelog_bytes_per_event": round(got[changelog] / n, 1)}


@dataclass(frozen=True)
class Drained:
    """A worker that has drained the preloaded events: its settings, URL, rate and stats."""

    settings: Settings
    base: str
    eps: float
    stats: dict[str, Any]
    served: str  # the model and version it served


@contextlib.contextmanager
def drained_worker(run: BenchRun, predictor: str = "auto") -> Iterator[Drained]:
    """(c)'s rate: a fresh worker serving `predictor` (auto: what it serves by default)
    drains the events preloaded into its own topics; its rate is events over the busy span
    (its first batch to its last, /api/stats), so the group join is not counted. The worker
    runs until the block ends."""
    s = run.base.model_copy(update={
        "topic_prefix": f"bench-{run.run_id}-{predictor}.",
        "app_id": f"bench-{run.run_id}-{predictor}", "data_dir": run.tmp / f"w-{predictor}"})
    ensure_topics(s)
    preload(s, s.topic_prefix + "events", run.payloads)
    base, n = f"http://127.0.0.1:{s.web_port}", len(run.payloads)
    if run.models is not None and predictor != "baseline":
        link_models(run.models, s.data_dir)
    log = run.tmp / f"worker-{predictor}.log"
    proc = start_worker(s, s.data_dir, log, extra_env=(
        {} if predictor == "auto" else {"LAMSTREAM_MODEL_NAME": predictor}))
    try:
        wait_healthy(base, proc, 120, log)
        health = get_json(f"{base}/health")
        served = f"{health.get('model')} {health.get('model_version')}"
        run.log(f"(c) the worker serves {served} ({predictor})")
        deadline = time.monotonic() + 600
        st = get_json(f"{base}/api/stats")
        while st["events"] < n and time.monotonic() < deadline:
            time.sleep(0.25)
            st = get_json(f"{base}/api/stats")
        if st["events"] < n:
            raise InfraError(f"worker processed {st['events']} of {n} events")
        eps = st["events"] / (st["last_batch_at"] - st["first_batch_at"])
        run.log(f"(c) lamstream worker: {eps:,.0f} ev/s "
                f"({st['recommendations']} recommendations, {st['dlq']} DLQ)")
        yield Drained(s, base, eps, st, served)
    finally:
        stop_worker(proc)


def _worker_phase(run: BenchRun, rate: float, seconds: float, predictor: str = "auto"
                  ) -> tuple[Settings, float, dict[str, Any]]:
    """(c) the lamstream worker serving `predictor` (auto: what it serves by default): its
    rate over the preloaded topic, then its latency at `rate` offered; returns its settings,
    its rate and the latency figures (with `predictor`: the model and version it served)."""
    with drained_worker(run, predictor) as w:
        s, n = w.settings, len(run.payloads)
        sizes = _bytes_per_event(s, n)
        sizes["bytes_in_per_event"] = round(sum(len(k) + len(v) for k, v in run.payloads) / n, 1)
        run.log(f"(c) published per event: {sizes['bytes_out_per_event']:,.0f} B of outputs "
                f"({sizes['decision_bytes_per_event']:,.0f} B decisions), "
                f"{sizes['changelog_bytes_per_event']:,.0f} B changelog, for "
                f"{sizes['bytes_in_per_event']:,.0f} B in")
        lat = _latency_at_load(s, run.payloads, rate, seconds)
        lat.update(sizes)
        lat["predictor"] = w.served
        run.log(f"(c) at {rate:.0f} ev/s offered: e2e p50 {lat['p50_ms']:.1f} ms, p99 "
                f"{lat['p99_ms']:.1f} ms over {lat['samples']} recommendations (inside the "
                f"worker, receipt to publish: p50 {lat['worker_p50_ms']:.1f} ms, p99 "
                f"{lat['worker_p99_ms']:.1f} ms)")
    return s, w.eps, lat


def models_for(settings: Settings, predictor: str, data: str | None, n_events: int, tmp: Path,
            log: Log) -> Path | None:
    """The registry the bench's workers read: DATA_DIR's; for the hybrid, when that holds
    none, a small one trained here on the bench's own events, said so in the log."""
    reg = ModelRegistry(settings.data_dir)
    latest = reg.latest("recommender")
    if predictor == "baseline":
        return None
    if predictor == "auto" or (latest is not None
                               and (reg.path("recommender", latest) / "hybrid").is_dir()):
        return reg.root if latest is not None else None
    from model.train.neural import TrainConfig  # torch: only when a hybrid must be trained
    from model.train.pipeline import train_recommender

    path = Path(data) if data else default_data()
    log(f"bench: no trained hybrid in {reg.root}: training a small one on the first "
        f"{n_events} events of {path} for this run (`lamstream train recommender --data FILE` "
        f"publishes a real one to DATA_DIR, which the bench then serves)")
    version, comp = train_recommender(path, tmp / "trained", max_events=n_events,
                                      cfg=TrainConfig(budget_s=60.0), methods=("hybrid",))
    log(f"bench: trained hybrid {version}: HR@20 {comp.methods['hybrid']['hr@20']}")
    return tmp / "trained" / "models"


def _figures(eps: float, lat: dict[str, Any]) -> dict[str, Any]:
    return {"predictor": lat["predictor"], "lamstream_eps": round(eps, 1),
            "p50_ms": round(lat["p50_ms"], 2), "p99_ms": round(lat["p99_ms"], 2),
            "worker_p50_ms": round(lat["worker_p50_ms"], 2),
            "worker_p99_ms": round(lat["worker_p99_ms"], 2), "latency_samples": lat["samples"],
            **{k: lat[k] for k in _SIZES}}


_SIZES = ("bytes_in_per_event", "bytes_out_per_event", "decision_bytes_per_event",
          "changelog_bytes_per_event")


def run_pipeline_bench(settings: Settings, *, n_events: int, data: str | None, log: Log,
                       naive_events: int | None = None, latency_rate: float = 2000.0,
                       latency_seconds: float = 10.0, predictor: str = "auto"
                       ) -> dict[str, Any]:
    """(a) raw, (b) naive, (c) the worker and (d) the floor, one after the other (module doc);
    with predictor "both", (c) for the hybrid and for the baseline, each named."""
    if predictor not in PREDICTORS:
        raise UsageError(f"--predictor must be one of {', '.join(PREDICTORS)}, not "
                         f"{predictor!r}")
    tmp = Path(tempfile.mkdtemp(prefix="lamstream-bench-"))
    payloads = load_payloads(data, n_events)
    models = models_for(settings, predictor, data, n_events, tmp, log)
    with broker_for(settings, log=log) as base_settings:
        run = BenchRun(base_settings, payloads, uuid.uuid4().hex[:6], tmp, log, models)
        log(f"bench: {n_events} real events, {base_settings.partitions} partitions, broker "
            f"{base_settings.bootstrap}")
        raw_eps = _raw_phase(run)
        step(log, 1, 4, "(a) raw done")
        # the same events as (c) by default: the naive agent gets faster over a longer run
        # (10,000 events: 2,935 / 3,119 ev/s; 60,000: 3,258 / 3,296), so a shorter run
        # would flatter the ratio
        naive_n = n_events if naive_events is None else min(naive_events, n_events)
        naive_eps = _naive_phase(run, naive_n)
        step(log, 2, 4, "(b) naive done")
        figures: dict[str, dict[str, Any]] = {}
        for name in (("hybrid", "baseline") if predictor == "both" else (predictor,)):
            s, eps, lat = _worker_phase(run, latency_rate, latency_seconds, name)
            figures[name] = _figures(eps, lat)
        step(log, 3, 4, "(c) worker done")
        # (d) the floor: the same load and observer through a bare passthrough process
        floor = _floor_latency(base_settings, run.run_id, s.fetch_max_wait_ms, payloads,
                               latency_rate, latency_seconds, tmp)
        log(f"(d) floor, a bare passthrough process at {latency_rate:.0f} ev/s: e2e p50 "
            f"{floor['p50_ms']:.1f} ms, p99 {floor['p99_ms']:.1f} ms over {floor['samples']} "
            f"events (the broker, the clients and this machine, before any work)")
        step(log, 4, 4, "(d) floor done")
    first = next(iter(figures.values()))  # the top-level figures: the hybrid's with "both"
    ls_eps = first["lamstream_eps"]
    out: dict[str, Any] = {
        "raw_eps": round(raw_eps, 1), "naive_eps": round(naive_eps, 1),
        "lamstream_eps": ls_eps,
        "ratio_vs_naive": round(ls_eps / naive_eps, 2),
        "ratio_vs_raw": round(ls_eps / raw_eps, 3),
        **{k: first[k] for k in ("p50_ms", "p99_ms", "worker_p50_ms", "worker_p99_ms", *_SIZES)},
        "floor_p50_ms": round(floor["p50_ms"], 2), "floor_p99_ms": round(floor["p99_ms"], 2),
        "events": n_events, "naive_events": naive_n, "partitions": base_settings.partitions,
        "latency_offered_eps": latency_rate, "latency_samples": first["latency_samples"],
        "predictor": first["predictor"], "predictors": figures,
    }
    if predictor == "both":
        out["hybrid_vs_baseline_eps"] = round(
            figures["hybrid"]["lamstream_eps"] / figures["baseline"]["lamstream_eps"], 3)
    return out
