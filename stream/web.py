"""HTTP views on the worker: features, health, metrics, and the JSON behind the dashboard."""

from __future__ import annotations

import hmac
import time
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View

if TYPE_CHECKING:
    from stream.app import Worker


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


def health_report(worker: Worker) -> dict[str, Any]:
    app = worker.app
    ingest = worker.ingest
    consumer = app.consumer
    assignment = sorted(f"{tp.topic}:{tp.partition}" for tp in consumer.assignment())
    recovery_done = app.tables.recovery.completed.is_set()
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
        pos = consumer._read_offset.get(tp)
        value = max(0, (hw or 0) - ((pos + 1) if pos is not None else 0))
        lag[str(tp.partition)] = value
        worker.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(
            value)
    return lag


def attach_views(worker: Worker) -> None:
    app = worker.app

    @app.page("/health")
    class Health(View):
        async def get(self, request: Request) -> Response:
            report = health_report(worker)
            return self.json(report, status=200 if report["status"] == "ok" else 503)

    @app.page("/metrics")
    class Metrics(View):
        async def get(self, request: Request) -> Response:
            update_lag(worker)
            return self.bytes(worker.metrics.render(),
                              content_type="text/plain; version=0.0.4; charset=utf-8")

    @app.page("/features/{user_id}")
    class Features(View):
        async def get(self, request: Request, user_id: str) -> Response:
            if not _authorized(worker, request):
                return self.json({"error": "missing or wrong token"}, status=401)
            state = worker.ingest.read_state(user_id)
            if state is None:
                return self.json({"error": f"unknown user {user_id!r} on this worker"},
                                 status=404)
            return self.json(state.snapshot(worker.features, int(time.time() * 1000)))

    @app.page("/api/stats")
    class Stats(View):
        async def get(self, request: Request) -> Response:
            s = worker.ingest.stats
            return self.json({
                "ts": time.time(), "events": s.events, "dlq": s.dlq,
                "duplicates": s.duplicates, "late": s.late,
                "recommendations": s.recommendations, "alerts": s.alerts,
                "lag": update_lag(worker), "health": health_report(worker),
            })

    @app.page("/api/recent")
    class Recent(View):
        async def get(self, request: Request) -> Response:
            if not _authorized(worker, request):
                return self.json({"error": "missing or wrong token"}, status=401)
            return self.json({"decisions": worker.ingest.recent[-50:]})
