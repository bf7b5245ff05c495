"""/health and /metrics over HTTP for the processes without a web server: feedback join, trainer."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stream.errors import InfraError
from stream.settings import Settings

__all__ = ["LagProbe", "ProbeServer", "counter", "gauge", "lag_gauge", "serve_probes",
           "start_probe_server"]

log = logging.getLogger(__name__)
_PROM_TEXT = "text/plain; version=0.0.4; charset=utf-8"
LAG_EVERY_S = 10.0  # lag is read from the broker this often, off the request path

Health = Callable[[], dict[str, Any]]
Families = Callable[[], Iterable[Metric]]


def counter(name: str, doc: str, values: Mapping[tuple[str, ...], float],
            labels: Sequence[str] = ()) -> CounterMetricFamily:
    """A counter family from {label values: value} (the processes keep plain ints)."""
    fam = CounterMetricFamily(name, doc, labels=list(labels))
    for key, value in values.items():
        fam.add_metric(list(key), value)
    return fam


def gauge(name: str, doc: str, values: Mapping[tuple[str, ...], float],
          labels: Sequence[str] = ()) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, doc, labels=list(labels))
    for key, value in values.items():
        fam.add_metric(list(key), value)
    return fam


class LagProbe:
    """A consumer group's lag per topic and partition, end offset minus committed
    (stream.kafka.admin.consumer_lag), refreshed by a daemon thread every LAG_EVERY_S."""

    def __init__(self, settings: Settings, group_id: str, topics: Sequence[str],
                 every_s: float = LAG_EVERY_S) -> None:
        self.settings, self.group_id, self.topics = settings, group_id, tuple(topics)
        self.every_s = every_s
        self.lag: dict[str, dict[int, int]] = {}
        self.error: str | None = None
        self.read_at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lag-{group_id}", daemon=True)

    def start(self) -> LagProbe:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    def refresh(self) -> None:
        from stream.kafka.admin import consumer_lag  # kafka-python admin: only when probing

        try:
            self.lag = {t: consumer_lag(self.settings, self.group_id, t) for t in self.topics}
            self.error, self.read_at = None, time.time()
        except InfraError as exc:  # the broker is away: keep the last reading, say so
            self.error = str(exc)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.every_s)

    def report(self) -> dict[str, Any]:
        return {"group": self.group_id, "total": sum(sum(p.values()) for p in self.lag.values()),
                "topics": {t: {str(p): v for p, v in parts.items()}
                           for t, parts in self.lag.items()},
                "read_at": self.read_at, "error": self.error}


def lag_gauge(prefix: str, probe: LagProbe) -> GaugeMetricFamily:
    return gauge(f"{prefix}_consumer_lag", "Records not yet committed by the consumer group "
                 "(end offset minus committed)",
                 {(t, str(p)): v for t, parts in probe.lag.items() for p, v in parts.items()},
                 ("topic", "partition"))


class _Collect(Collector):
    def __init__(self, families: Families) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families()


_JSON = "application/json"


def _answer(path: str, health: Health, registry: CollectorRegistry) -> tuple[int, str, bytes]:
    """(status, content type, body) of GET `path`."""
    try:
        if path == "/health":
            report = health()
            return (200 if report.get("status") == "ok" else 503), _JSON, orjson.dumps(report)
        if path == "/metrics":
            return 200, _PROM_TEXT, generate_latest(registry)
        return 404, _JSON, b'{"error": "not found"}'
    except Exception as exc:  # noqa: BLE001 - a probe answers, it never dies
        log.exception("probe %s failed", path)
        return 500, _JSON, orjson.dumps({"error": repr(exc)})


class ProbeServer:
    """GET /health: the process's report as JSON (200 when its "status" is "ok", else 503);
    GET /metrics: Prometheus text. Served from a daemon thread, so a process busy in a
    blocking loop (the trainer's poll) still answers its probes."""

    def __init__(self, host: str, port: int, health: Health, families: Families) -> None:
        registry = CollectorRegistry()
        registry.register(_Collect(families))

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                status, ctype, body = _answer(self.path.split("?", 1)[0], health, registry)
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("probe: " + format, *args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="probe-http",
                                        daemon=True)

    def start(self) -> ProbeServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start_probe_server(what: str, host: str, port: int, health: Health, families: Families
                       ) -> ProbeServer | None:
    """Serve the probes of `what` on host:port; None (logged) when the port is 0 (off) or
    taken: the process runs on without them, and its liveness probe says so."""
    if port == 0:
        return None
    try:
        server = ProbeServer(host, port, health, families).start()
    except OSError as exc:
        log.error("%s: cannot serve /health and /metrics on %s:%d: %s", what, host, port, exc)
        return None
    log.info("%s: /health and /metrics on http://%s:%d", what, host, server.port)
    return server


@contextlib.contextmanager
def serve_probes(what: str, settings: Settings, port: int, group_id: str, topics: Sequence[str],
                 health: Callable[[LagProbe, float], dict[str, Any]],
                 families: Callable[[LagProbe], Iterable[Metric]]) -> Iterator[None]:
    """/health and /metrics of `what` on WEB_HOST:`port` for the duration of the block, with
    the lag of `group_id` on `topics` (health gets it and the start time, families the lag)."""
    lag = LagProbe(settings, group_id, topics)
    started = time.time()
    server = start_probe_server(what, settings.web_host, port, lambda: health(lag, started),
                                lambda: families(lag))
    if server is not None:
        lag.start()
    try:
        yield
    finally:
        lag.close()
        if server is not None:
            server.close()
