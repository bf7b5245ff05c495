"""The JSON behind the worker's views: health, lag, models, one user, learning, live series."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

import aiohttp

from model.registry import ModelRegistry
from model.stats import percentile
from stream.kafka.faust_patches import committed_offset
from stream.worker.types import Worker

LATENCY_WINDOW_S = 5.0  # the dashboard's p50/p99 are over this many seconds
TABLE_COUNT_EVERY_S = 10.0  # /metrics recounts the table's users at most this often
LEARNING_TIMEOUT_S = 1.5  # the dashboard polls every 10 s; a process slower than this is away
log = logging.getLogger(__name__)


def health_report(worker: Worker) -> dict[str, Any]:
    app = worker.app
    ingest = worker.ingest
    consumer = app.consumer
    assignment = sorted(f"{tp.topic}:{tp.partition}" for tp in consumer.assignment())
    pending = ingest.holder.pending
    recovery_done = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
    ok = (ingest.state == "running" and not app.should_stop and recovery_done
          and not app.rebalancing)
    stalled_s = stalled_for(worker) if ok else None
    return {
        "status": "starting" if not ok else "stalled" if stalled_s is not None else "ok",
        # seconds without a processed batch while events wait (None: not stalled)
        "stalled_for_s": stalled_s,
        "ingest": ingest.state,
        "rebalancing": bool(app.rebalancing),
        "recovery_completed": recovery_done,
        "assignment": assignment,
        "model": worker.ingest.holder.current.name,
        "model_version": worker.ingest.holder.current.version,
        # loaded from an announcement, serving from the next batch (an idle worker waits)
        "model_version_pending": pending.version if pending is not None else None,
        "model_refused": worker.metrics.last_refusal,  # the latest announcement not served
        "uptime_s": round(time.time() - ingest.started_at, 1),
        # what must agree between processes, for `lamstream doctor` to compare
        "settings": worker.settings.shared(),
    }


def stalled_for(worker: Worker) -> float | None:
    """Seconds since the last processed batch when events wait on this worker's partitions
    and that is longer than LAMSTREAM_STALL_AFTER_S; else None. What a running, assigned,
    healthy-looking worker that has stopped consuming shows (a soak on the embedded broker
    once stopped after ~400k events while every other check said ok)."""
    ingest = worker.ingest
    idle = time.time() - (ingest.stats.last_batch_at or ingest.started_at)
    if idle <= worker.settings.stall_after_s or sum(update_lag(worker).values()) == 0:
        return None
    return round(idle, 1)


def update_lag(worker: Worker) -> dict[str, int]:
    """Per events partition: high watermark minus the group's committed offset (what a
    restart would read again; a partition never committed counts from 0), as
    stream.kafka.admin.consumer_lag reads it from outside. Delivered-but-uncommitted records
    count as lag."""
    consumer = worker.app.consumer
    lag: dict[str, int] = {}
    events = worker.topics.events.name
    for tp in consumer.assignment():
        if tp.topic != events:
            continue
        try:
            hw = consumer.highwater(tp)
        except Exception:  # not fetched yet
            continue
        done = committed_offset(consumer, tp)
        value = max(0, (hw or 0) - (done or 0))
        lag[str(tp.partition)] = value
        worker.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
            value)
    return lag


def _pct(values: list[float], q: float) -> float | None:
    p = percentile(values, q)
    return None if p is None else round(p, 3)


def _since(recent: deque[tuple[float, float]], horizon: float) -> list[float]:
    """The values of (monotonic time, value) pairs newer than horizon; drops older ones."""
    while recent and recent[0][0] < horizon:
        recent.popleft()
    return [v for _, v in recent]


class LiveSeries:
    """One sample per second of the worker's counters and latencies: the dashboard's charts."""

    def __init__(self, size: int = 300) -> None:
        self.samples: deque[dict[str, Any]] = deque(maxlen=size)
        self._prev: tuple[float, int, int, int] | None = None

    def sample(self, worker: Worker) -> dict[str, Any]:
        ingest = worker.ingest
        s = ingest.stats
        mono = time.monotonic()
        counts = (s.events, s.recommendations + s.alerts, s.dlq)
        prev, self._prev = self._prev, (mono, *counts)
        dt = mono - prev[0] if prev else 0.0

        def rate(i: int) -> float | None:
            return round((counts[i] - prev[i + 1]) / dt, 2) if prev and dt > 0 else None

        e2e = _since(ingest.recent.e2e, mono - LATENCY_WINDOW_S)
        inference = _since(ingest.recent.inference, mono - LATENCY_WINDOW_S)
        point = {
            "t": round(time.time(), 3), "events": counts[0], "decisions": counts[1],
            "dlq": counts[2], "events_ps": rate(0), "decisions_ps": rate(1), "dlq_ps": rate(2),
            "e2e_p50": _pct(e2e, 0.5), "e2e_p99": _pct(e2e, 0.99),
            "inference_p50": _pct(inference, 0.5), "inference_p99": _pct(inference, 0.99),
            "lag": sum(update_lag(worker).values()),
        }
        self.samples.append(point)
        return point

    def since(self, t: float) -> list[dict[str, Any]]:
        return [p for p in self.samples if p["t"] > t]


@functools.lru_cache(maxsize=32)
def offline_metrics(data_dir: str, role: str, version: str, method: str) -> dict[str, float]:
    """Numeric offline metrics of a published version from its registry manifest ({} if none).

    Versions are immutable, so one read per version is enough.
    """
    try:
        metrics = ModelRegistry(Path(data_dir)).manifest(role, version).get("metrics")
    except Exception:  # no registry, or a version that was never published (online baseline)
        return {}
    if not isinstance(metrics, dict):
        return {}
    block = metrics.get(method)
    if not isinstance(block, dict):
        blocks = [b for b in metrics.values() if isinstance(b, dict)]
        block = blocks[0] if len(blocks) == 1 else metrics
    return {str(k): round(float(v), 4) for k, v in block.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


def models_report(worker: Worker) -> list[dict[str, Any]]:
    """The recommender and risk model in service, with offline metrics when published."""
    ingest = worker.ingest
    cur = ingest.holder.current
    data_dir = str(worker.settings.data_dir)
    risk_version = getattr(cur, "risk_version", None)
    newest = ingest.recent.newest_decision()
    if newest is not None:  # what the latest prediction actually used
        risk_version = newest.risk_model_version
    rows = [{"role": "recommender", "name": cur.name, "version": cur.version,
             "metrics": offline_metrics(data_dir, "recommender", cur.version, cur.name)}]
    if risk_version:
        rows.append({"role": "risk", "name": "risk", "version": risk_version,
                     "metrics": offline_metrics(data_dir, "risk", risk_version, "risk_net")})
    return rows


def user_report(worker: Worker, user_id: str) -> dict[str, Any] | None:
    """Features, latest event with its prediction, and remembered decisions of one user.

    None when this worker knows nothing about the user.
    """
    ingest = worker.ingest
    state = ingest.read_state(user_id)
    decisions = list(reversed(ingest.recent.by_user.get(user_id, [])))
    last = ingest.recent.last_decision(user_id)
    if state is None and not decisions and last is None:
        return None
    threshold = worker.settings.risk_threshold
    latest = risk = None
    if last is not None:
        latest = {"event_id": last.event_id, "type": last.event_type,
                  "event_ts": last.event_ts, "model": last.model,
                  "model_version": last.model_version,
                  "items": [{"item_id": i[0], "score": i[1]} for i in last.items]}
        risk = {"event_id": last.event_id, "event_ts": last.event_ts, "score": last.risk_score,
                "threshold": threshold, "alert": last.risk_score >= threshold,
                "model_version": last.risk_model_version,
                "reasons": [{"feature": f, "value": v, "contribution": c}
                            for f, v, c in last.reasons]}
    return {
        "user_id": user_id,
        "features": (state.snapshot(worker.features, int(time.time() * 1000))
                     if state is not None else None),
        "latest": latest, "risk": risk, "decisions": decisions, "threshold": threshold,
    }


async def _health_of(worker: Worker, url: str) -> dict[str, Any]:
    """GET url/health: {"url", "reachable", "health"} or {"url", "reachable", "error"}."""
    try:
        async with worker.app.http_client.get(
                url + "/health", timeout=aiohttp.ClientTimeout(total=LEARNING_TIMEOUT_S)) as resp:
            body = await resp.json(content_type=None)
    except Exception as exc:  # noqa: BLE001 - down, refused, timeout, not JSON: all "away"
        return {"url": url, "reachable": False, "error": str(exc) or type(exc).__name__}
    return {"url": url, "reachable": True, "health": body if isinstance(body, dict) else {}}


async def learning_report(worker: Worker) -> dict[str, Any]:
    """The feedback join's and the trainer's /health, read at FEEDBACK_URL and TRAINER_URL.

    Those processes keep the learning loop's numbers (rewards per policy, pending, gate
    decisions, serving versions, lag); the worker only relays them, so the panel shows what
    they report or, when neither answers, that feedback is not produced yet, never made-up
    data. A `worker.learning` source, when set, adds its report.
    """
    s = worker.settings
    urls = {"feedback": s.feedback_url, "trainer": s.trainer_url}
    asked = {k: u for k, u in urls.items() if u}
    answers = await asyncio.gather(*(_health_of(worker, u) for u in asked.values()))
    report: dict[str, Any] = {"topic": worker.topics.feedback.name,
                              **{k: None for k in urls}, **dict(zip(asked, answers, strict=True))}
    report["available"] = any(a["reachable"] for a in answers)
    if worker.learning is not None:
        report.update(worker.learning.report(), available=True)
    if not report["available"]:
        where = ", ".join(f"{k} at {u}" for k, u in asked.items()) or "no FEEDBACK_URL set"
        report["message"] = ("Feedback is not produced yet: no feedback join or trainer "
                             f"answers ({where}).")
    return report


class TableSize:
    """Users in the table partitions this worker owns, for lamstream_table_keys.

    Counted exactly (RocksDB's estimate-num-keys counts every overwrite still in the memtable,
    so a busy worker would report several times its users); counting reads every key of the
    owned partitions, so it runs in a thread, at most once per TABLE_COUNT_EVERY_S, and
    scrapes in between reuse the last count.
    """

    def __init__(self) -> None:
        self.value: int | None = None
        self._at = float("-inf")

    async def refresh(self, worker: Worker) -> int | None:
        if time.monotonic() - self._at >= TABLE_COUNT_EVERY_S:
            self._at = time.monotonic()
            try:
                self.value = await asyncio.get_running_loop().run_in_executor(
                    None, len, worker.table.data)
            except Exception as exc:  # a rebalance opening/closing partitions meanwhile
                log.debug("table size not counted this time: %r", exc)
        return self.value
