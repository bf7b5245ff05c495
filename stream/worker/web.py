"""HTTP views on the worker: features, health, metrics, and the JSON behind the dashboard."""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
import urllib.parse
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View

from model.stats import percentile
from stream.worker.routing import (
    LOCAL_ONLY,
    SERVED_BY,
    PeerAnswer,
    ask_peers,
    partition_owners,
    peers_to_ask,
)

if TYPE_CHECKING:
    from stream.worker.app import Worker

_STATIC = Path(__file__).resolve().parent / "static"
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
                  ".txt": "text/plain; charset=utf-8"}
LATENCY_WINDOW_S = 5.0  # the dashboard's p50/p99 are over this many seconds
TABLE_COUNT_EVERY_S = 10.0  # /metrics recounts the table's users at most this often
log = logging.getLogger(__name__)


def _authorized(worker: Worker, request: Request) -> bool:
    token = worker.settings.api_token
    if token is None:
        return True
    want = token.get_secret_value()
    got = ""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        got = header[7:]
    else:
        got = request.query.get("token", "")
    return hmac.compare_digest(got.encode(), want.encode())


async def features_elsewhere(worker: Worker, user_id: str, me: str) -> PeerAnswer:
    """The user's features from whichever other worker of the group holds them."""
    app = worker.app
    changelog = worker.ingest.table.changelog_topic.get_topic_name()
    owners = partition_owners(app.assignor.tables_metadata(), changelog)
    peers = peers_to_ask(user_id.encode(), owners, me)
    token = worker.settings.api_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    path = f"/features/{urllib.parse.quote(user_id, safe='')}?{LOCAL_ONLY}=1"

    async def get(peer: str) -> tuple[int, Any]:
        async with app.http_client.get(peer + path, headers=headers) as resp:
            return resp.status, await resp.json(content_type=None)
    return await ask_peers(peers, get, user_id)


def health_report(worker: Worker) -> dict[str, Any]:
    app = worker.app
    ingest = worker.ingest
    consumer = app.consumer
    assignment = sorted(f"{tp.topic}:{tp.partition}" for tp in consumer.assignment())
    recovery_done = app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
    ok = (ingest.state == "running" and not app.should_stop and recovery_done
          and not app.rebalancing)
    return {
        "status": "ok" if ok else "starting",
        "ingest": ingest.state,
        "rebalancing": bool(app.rebalancing),
        "recovery_completed": recovery_done,
        "assignment": assignment,
        "model": worker.ingest.holder.current.name,
        "model_version": worker.ingest.holder.current.version,
        "uptime_s": round(time.time() - ingest.started_at, 1),
    }


def update_lag(worker: Worker) -> dict[str, int]:
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
        pos = consumer._read_offset.get(tp)  # type: ignore[attr-defined]
        value = max(0, (hw or 0) - ((pos + 1) if pos is not None else 0))
        lag[str(tp.partition)] = value
        worker.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
            value)
    return lag


def broker_connected(worker: Worker) -> bool | None:
    """Whether the worker's consumer holds a live broker connection (None: cannot tell)."""
    try:
        consumer: Any = worker.app.consumer
        conns = list(consumer._thread._consumer._client._conns.values())
    except Exception:  # not started yet, or another transport
        return None
    return any(c.connected() for c in conns)


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

        e2e = _since(ingest.e2e_recent, mono - LATENCY_WINDOW_S)
        inference = _since(ingest.inference_recent, mono - LATENCY_WINDOW_S)
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
        from model.registry import ModelRegistry

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
    newest = ingest.newest_decision()
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
    decisions = list(reversed(ingest.recent_by_user.get(user_id, [])))
    last = ingest.last_decision(user_id)
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


def learning_report(worker: Worker) -> dict[str, Any]:
    """Reward per window and exploration rate from the feedback topic, once a worker has them.

    A feedback agent publishes its report as `worker.learning` (an object with `report()`);
    until one exists the dashboard shows that feedback is not produced yet, never made-up data.
    """
    source = getattr(worker, "learning", None)
    if source is None:
        return {"available": False, "topic": worker.topics.feedback.name,
                "message": "Feedback is not produced yet: no agent on this worker joins "
                           "decisions with their outcomes on the feedback topic."}
    report: dict[str, Any] = source.report()
    return {"available": True, "topic": worker.topics.feedback.name, **report}


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


def _static(name: str) -> tuple[bytes, str] | None:
    path = (_STATIC / name).resolve()
    kind = _CONTENT_TYPES.get(path.suffix)
    if kind is None or path.parent != _STATIC or name.startswith(".") or not path.is_file():
        return None
    return path.read_bytes(), kind


def attach_views(worker: Worker) -> None:
    app = worker.app

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            report = health_report(worker)
            return self.json(report, status=200 if report["status"] == "ok" else 503)

    table_size = TableSize()

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            update_lag(worker)
            users = await table_size.refresh(worker)
            if users is not None:
                worker.metrics.table_keys.set(users)
            # aiohttp refuses a charset in content_type=, so the header is set as it is
            return self.bytes(worker.metrics.render(), headers={
                "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    @app.page("/features/{user_id}")
    class Features(View):
        async def get(self, request: Request, user_id: str) -> Response:
            if not _authorized(worker, request):
                return self.json({"error": "missing or wrong token"}, status=401)
            me = str(app.conf.canonical_url)
            state = worker.ingest.read_state(user_id)
            if state is not None:
                return self.json(state.snapshot(worker.features, int(time.time() * 1000)),
                                 headers={SERVED_BY: me})
            if request.query.get(LOCAL_ONLY, "0") not in ("0", "false", ""):
                return self.json({"error": f"unknown user {user_id!r} on this worker"},
                                 status=404)
            answer = await features_elsewhere(worker, user_id, me)
            return self.json(answer.body, status=answer.status,
                             headers={SERVED_BY: answer.served_by} if answer.served_by else None)

    @app.page("/api/stats")
    class Stats(View):
        async def get(self, request: Request) -> Response:
            s = worker.ingest.stats
            return self.json({
                "ts": time.time(), "events": s.events, "dlq": s.dlq,
                "duplicates": s.duplicates, "late": s.late,
                "recommendations": s.recommendations, "alerts": s.alerts,
                "first_batch_at": s.first_batch_at, "last_batch_at": s.last_batch_at,
                "lag": update_lag(worker), "health": health_report(worker),
            })

    @app.page("/api/recent")
    class Recent(View):
        async def get(self, request: Request) -> Response:
            if not _authorized(worker, request):
                return self.json({"error": "missing or wrong token"}, status=401)
            return self.json({"decisions": worker.ingest.recent[-50:]})

    # -- the dashboard: GET / (or /ui), its static files and the JSON it polls ----------
    live = LiveSeries()

    async def sample_live() -> None:
        live.sample(worker)

    app.timer(1.0, name="dashboard-sampler")(sample_live)

    @app.page("/")
    class Dashboard(View):
        async def get(self, request: Request) -> Response:
            found = _static("index.html")
            if found is None:
                return self.text("dashboard assets missing from the package", status=500)
            return self.bytes(found[0], headers={"Content-Type": found[1],
                                                 "Cache-Control": "no-cache"})

    @app.page("/ui")
    class DashboardUi(Dashboard):
        pass

    @app.page("/static/{name}")
    class Static(View):
        async def get(self, request: Request, name: str) -> Response:
            found = _static(name)
            if found is None:
                return self.text(f"no static file {name!r}", status=404)
            return self.bytes(found[0], headers={"Content-Type": found[1],
                                                 "Cache-Control": "no-cache"})

    @app.page("/api/live")
    class Live(View):
        async def get(self, request: Request) -> Response:
            try:
                since = float(request.query.get("since", "0"))
            except ValueError:
                since = 0.0
            s = worker.ingest.stats
            return self.json({
                "ts": time.time(), "health": health_report(worker),
                "broker": {"bootstrap": worker.settings.bootstrap,
                           "connected": broker_connected(worker)},
                "totals": {"events": s.events, "recommendations": s.recommendations,
                           "alerts": s.alerts, "dlq": s.dlq, "duplicates": s.duplicates,
                           "late": s.late},
                "lag": update_lag(worker), "latency_window_s": LATENCY_WINDOW_S,
                "series": live.since(since), "models": models_report(worker),
                "events_topic": worker.topics.events.name,
                "risk_threshold": worker.settings.risk_threshold,
                "auth_required": worker.settings.api_token is not None,
            })

    @app.page("/api/users/{user_id}")
    class User(View):
        async def get(self, request: Request, user_id: str) -> Response:
            if not _authorized(worker, request):
                return self.json({"error": "missing or wrong token"}, status=401)
            report = user_report(worker, user_id)
            if report is None:
                return self.json({"error": f"unknown user {user_id!r} on this worker"},
                                 status=404)
            return self.json(report)

    @app.page("/api/learning")
    class Learning(View):
        async def get(self, request: Request) -> Response:
            return self.json(learning_report(worker))
