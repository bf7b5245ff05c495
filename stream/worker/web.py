"""HTTP views on the worker: features, health, metrics, the dashboard and the JSON it polls."""

from __future__ import annotations

import hmac
import time
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar

from faust.web import Request, Response, View

from stream.kafka.faust_patches import broker_connected
from stream.worker.reports import (
    LATENCY_WINDOW_S,
    LiveSeries,
    TableSize,
    health_report,
    learning_report,
    models_report,
    update_lag,
    user_report,
)
from stream.worker.routing import (
    LOCAL_ONLY,
    SERVED_BY,
    PeerAnswer,
    ask_peers,
    partition_owners,
    peers_to_ask,
)
from stream.worker.types import Worker

_STATIC = Path(__file__).resolve().parent / "static"
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
                  ".txt": "text/plain; charset=utf-8"}
# The dashboard builds every element in code (no inline script or style attribute, nothing
# from another origin), so the policy can forbid all of it: what an escaping slip would let an
# event field inject cannot run, load or frame the page.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
       "form-action 'none'")


def security_headers() -> dict[str, str]:
    """Headers for the dashboard page and its static files."""
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer"}


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


def _static(name: str) -> tuple[bytes, str] | None:
    path = (_STATIC / name).resolve()
    kind = _CONTENT_TYPES.get(path.suffix)
    if kind is None or path.parent != _STATIC or name.startswith(".") or not path.is_file():
        return None
    return path.read_bytes(), kind


# -- the views: one class per route, bound to a worker by attach_views ---------------------
class WorkerView(View):
    """A view of one worker. `protected` views answer 401 without the API token (when one is
    set): they show user data."""

    protected: ClassVar[bool] = False
    worker: ClassVar[Worker]
    live: ClassVar[LiveSeries]
    table_size: ClassVar[TableSize]

    async def dispatch(self, request: Any) -> Any:
        if self.protected and not _authorized(self.worker, request):
            return self.json({"error": "missing or wrong token"}, status=401)
        return await super().dispatch(request)

    def static_file(self, name: str, missing: Response) -> Response:
        found = _static(name)
        if found is None:
            return missing
        return self.bytes(found[0], headers={"Content-Type": found[1],
                                             "Cache-Control": "no-cache",
                                             **security_headers()})


class Health(WorkerView):
    async def get(self, request: Request) -> Response:
        report = health_report(self.worker)
        return self.json(report, status=200 if report["status"] == "ok" else 503)


class Metrics(WorkerView):
    async def get(self, request: Request) -> Response:
        worker = self.worker
        update_lag(worker)
        users = await self.table_size.refresh(worker)
        if users is not None:
            worker.metrics.table_keys.set(users)
        # aiohttp refuses a charset in content_type=, so the header is set as it is
        return self.bytes(worker.metrics.render(), headers={
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


class Features(WorkerView):
    protected = True

    async def get(self, request: Request, user_id: str) -> Response:
        worker = self.worker
        me = str(worker.app.conf.canonical_url)
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


class Stats(WorkerView):
    async def get(self, request: Request) -> Response:
        s = self.worker.ingest.stats
        return self.json({
            "ts": time.time(), "events": s.events, "dlq": s.dlq,
            "duplicates": s.duplicates, "late": s.late,
            "recommendations": s.recommendations, "alerts": s.alerts,
            "first_batch_at": s.first_batch_at, "last_batch_at": s.last_batch_at,
            "lag": update_lag(self.worker), "health": health_report(self.worker),
        })


class Recent(WorkerView):
    protected = True

    async def get(self, request: Request) -> Response:
        return self.json({"decisions": self.worker.ingest.recent.decisions[-50:]})


class Dashboard(WorkerView):
    """GET / (or /ui): the dashboard page; it polls the JSON views below."""

    async def get(self, request: Request) -> Response:
        return self.static_file("index.html", self.text(
            "dashboard assets missing from the package", status=500))


class DashboardUi(Dashboard):
    pass


class Static(WorkerView):
    async def get(self, request: Request, name: str) -> Response:
        return self.static_file(name, self.text(f"no static file {name!r}", status=404))


class Live(WorkerView):
    async def get(self, request: Request) -> Response:
        worker = self.worker
        try:
            since = float(request.query.get("since", "0"))
        except ValueError:
            since = 0.0
        s = worker.ingest.stats
        return self.json({
            "ts": time.time(), "health": health_report(worker),
            "broker": {"bootstrap": worker.settings.bootstrap,
                       "connected": broker_connected(worker.app.consumer)},
            "totals": {"events": s.events, "recommendations": s.recommendations,
                       "alerts": s.alerts, "dlq": s.dlq, "duplicates": s.duplicates,
                       "late": s.late},
            "lag": update_lag(worker), "latency_window_s": LATENCY_WINDOW_S,
            "series": self.live.since(since), "models": models_report(worker),
            "events_topic": worker.topics.events.name,
            "risk_threshold": worker.settings.risk_threshold,
            "auth_required": worker.settings.api_token is not None,
        })


class User(WorkerView):
    protected = True

    async def get(self, request: Request, user_id: str) -> Response:
        report = user_report(self.worker, user_id)
        if report is None:
            return self.json({"error": f"unknown user {user_id!r} on this worker"},
                             status=404)
        return self.json(report)


class Learning(WorkerView):
    async def get(self, request: Request) -> Response:
        return self.json(learning_report(self.worker))


ROUTES: tuple[tuple[str, type[WorkerView]], ...] = (
    ("/health", Health),
    ("/metrics", Metrics),
    ("/features/{user_id}", Features),
    ("/api/stats", Stats),
    ("/api/recent", Recent),
    ("/", Dashboard),
    ("/ui", DashboardUi),
    ("/static/{name}", Static),
    ("/api/live", Live),
    ("/api/users/{user_id}", User),
    ("/api/learning", Learning),
)


def attach_views(worker: Worker) -> None:
    """Serve ROUTES on the worker's web server, each view bound to this worker, and sample
    the dashboard's live series once a second."""
    live = LiveSeries()
    bound = {"worker": worker, "live": live, "table_size": TableSize()}
    for path, view in ROUTES:
        worker.app.page(path)(type(view.__name__, (view,), bound))

    async def sample_live() -> None:
        live.sample(worker)

    worker.app.timer(1.0, name="dashboard-sampler")(sample_live)
