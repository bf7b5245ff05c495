"""`lamstream demo`: broker + worker + replay of real events, live decisions and a summary."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from model.datasets import iter_payloads
from model.registry import ModelRegistry
from model.stats import percentile
from stream.client import EventProducer, PredictionSubscriber, Value
from stream.devtools.procs import (
    broker_for,
    get_json,
    link_models,
    start_worker,
    stop_worker,
    wait_healthy,
)
from stream.devtools.replay import default_data, paced
from stream.kafka.admin import ensure_topics
from stream.schemas import DlqRecord, Recommendation, RiskAlert
from stream.settings import Settings

Payload = tuple[bytes | None, bytes]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _injected(now_ms: int) -> list[tuple[bytes | None, bytes, str]]:
    """A few records a real stream has too: malformed ones and a burst that looks like fraud."""
    bad: list[tuple[bytes | None, bytes, str]] = [
        (b"demo-bad", b"{not json", "not JSON"),
        (b"demo-bad", orjson.dumps({"event_id": "bad-1", "user_id": "demo-bad", "type": "teleport",
                                    "item_id": "x", "ts": now_ms}), "unknown type"),
        (b"demo-bad", orjson.dumps({"event_id": "bad-2", "user_id": "demo-bad", "type": "purchase",
                                    "item_id": "x", "ts": now_ms, "price": -5}), "negative price"),
        (b"someone-else", orjson.dumps({"event_id": "bad-3", "user_id": "demo-bad",
                                        "type": "view", "item_id": "x", "ts": now_ms}),
         "key/user mismatch"),
    ]
    for i in range(8):  # one user, 8 purchases in 40 s from 5 devices and 6 IPs
        bad.append((b"demo-burst", orjson.dumps({
            "event_id": f"burst-{i}", "user_id": "demo-burst", "type": "purchase",
            "item_id": f"giftcard-{i % 2}", "ts": now_ms + i * 5000, "price": 200.0,
            "device_id": f"dev-{i % 5}", "ip": f"10.0.{i % 6}.1"}), "injected burst"))
    return bad


class _Watch:
    """Prints a sample of the decisions and every alert and DLQ record while the demo runs,
    and keeps the recommendations' latencies for the summary."""

    def __init__(self, settings: Settings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.latencies: list[float] = []
        self.stop = threading.Event()
        dlq = [settings.topic_prefix + "events.dlq"]
        self.threads = [threading.Thread(target=self._listen, args=(None,), daemon=True),
                        threading.Thread(target=self._listen, args=(dlq,), daemon=True)]

    def __enter__(self) -> _Watch:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)

    def _listen(self, topics: list[str] | None) -> None:
        with PredictionSubscriber(self.settings, topics=topics, from_beginning=True) as sub:
            while not self.stop.is_set():
                for rec in sub.poll(0.5):
                    self._show(rec.value)

    def _show(self, rec: Value) -> None:
        if isinstance(rec, Recommendation):
            self.latencies.append(rec.latency_ms)
            if len(self.latencies) % 2000 == 1:
                items = ", ".join(i.item_id for i in rec.items[:5])
                self.console.print(f"  [cyan]rec[/] user {rec.user_id} after {rec.event_id}: "
                                   f"{items} ... ({rec.model} {rec.latency_ms:.1f} ms)")
        elif isinstance(rec, RiskAlert):
            why = ", ".join(f"{r.feature}={r.value:g}" for r in rec.reasons[:3])
            self.console.print(f"  [red]ALERT[/] user {rec.user_id} score {rec.score:.2f}: "
                               f"{why}")
        elif isinstance(rec, DlqRecord):
            self.console.print(f"  [yellow]DLQ[/] {rec.error_kind}: {rec.error[:80]}")


def _replay(s: Settings, path: Path, events: int, rate: float, console: Console) -> int:
    """Send up to `events` events of `path` at `rate`, then some of them again (producer
    retries) and the injected records; returns how many records were sent."""
    sent = 0
    dups: list[Payload] = []
    with EventProducer(s, validate=False) as producer, Progress(
        TextColumn("replaying"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console, transient=False,
    ) as progress:
        task = progress.add_task("events", total=events)
        for key, value in paced(iter_payloads(path), rate, events):
            k = key.encode() if key is not None else None
            producer.send_raw(value, k)
            sent += 1
            if sent % 997 == 0:
                dups.append((k, value))
            if sent % 200 == 0:
                progress.update(task, completed=sent)
        progress.update(task, completed=sent)
        extra = dups + [(k, v) for k, v, _ in _injected(int(time.time() * 1000))]
        for k, value in extra:
            producer.send_raw(value, k)
        producer.flush()
    return sent + len(extra)


def _processed(base: str, total: int, timeout: float) -> dict[str, Any]:
    """The worker's /api/stats once it has processed `total` records (or at the timeout)."""
    deadline = time.monotonic() + timeout
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        stats = get_json(f"{base}/api/stats", 2.0)
        if stats["events"] >= total:
            break
        time.sleep(0.5)
    return stats


def _summary(total: int, stats: dict[str, Any], elapsed: float, latencies: list[float],
             burst: dict[str, Any]) -> dict[str, Any]:
    return {
        "events_sent": total, "events_processed": stats.get("events"),
        "dlq": stats.get("dlq"), "duplicates": stats.get("duplicates"),
        "late": stats.get("late"), "recommendations": stats.get("recommendations"),
        "risk_alerts": stats.get("alerts"),
        "throughput_eps": round(stats.get("events", 0) / elapsed, 1),
        "latency_p50_ms": _rounded(percentile(latencies, 0.5)),
        "latency_p99_ms": _rounded(percentile(latencies, 0.99)),
        "demo_burst_user_counts": burst.get("counts"),
    }


def use_registry(settings: Settings, data_dir: Path) -> str:
    """Give the demo's fresh worker state dir the models of DATA_DIR's registry (a link: the
    worker only reads them) when it holds a trained recommender, so the demo serves what
    `lamstream train recommender` published (the hybrid when it won); says what it found."""
    models = Path(settings.data_dir) / "models"
    reg = ModelRegistry(settings.data_dir)
    latest = reg.latest("recommender")
    if latest is None:
        return (f"no trained recommender in {models}: the online co-visitation baseline "
                "serves (`lamstream train recommender --data FILE` trains one, the hybrid "
                "among them)")
    link_models(models, data_dir)
    served = reg.manifest("recommender", latest).get("served")
    return f"recommender {latest} of {models} (its evaluation's winner: {served})"


def run_demo(settings: Settings, *, data: str | None, events: int, rate: float,
             hold: float = 0.0) -> None:
    """Broker (embedded unless configured) + one worker process, the replay, the summary."""
    console = Console(stderr=False)
    path = Path(data) if data else default_data()
    console.print(f"[bold]lamstream demo[/]: replaying up to {events} events from {path}")
    tmp = Path(tempfile.mkdtemp(prefix="lamstream-demo-"))
    registry = use_registry(settings, tmp / "data")
    console.print(f"models: {registry}")
    with broker_for(settings) as s:
        ensure_topics(s)
        base = f"http://127.0.0.1:{s.web_port}"
        log = tmp / "worker.log"
        proc = start_worker(s, tmp / "data", log)
        try:
            wait_healthy(base, proc, 120, log)
            health = get_json(f"{base}/health", 2.0)
            serving = f"{health.get('model')} {health.get('model_version')}"
            console.print(f"worker ready, serving {serving}: dashboard {base}/  features "
                          f"{base}/features/<user>")
            with _Watch(s, console) as watch:
                t0 = time.monotonic()
                total = _replay(s, path, events, rate, console)
                stats = _processed(base, total, 120)
                elapsed = time.monotonic() - t0
                time.sleep(2.0)  # let the subscribers catch up
            burst = get_json(f"{base}/features/demo-burst", 2.0) if stats else {}
            console.print("[bold]summary[/]")
            summary = {"serving": serving, "models": registry,
                       **_summary(total, stats, elapsed, watch.latencies, burst)}
            for name, v in summary.items():
                console.print(f"  {name:>24}: {v}")
            if hold:
                _hold(console.print, base, hold)
        finally:
            stop_worker(proc)


def _hold(say: Callable[[str], None], base: str, seconds: float) -> None:
    """Keep broker and worker up after the replay so the dashboard can still be explored."""
    until = "Ctrl-C" if seconds < 0 else f"{seconds:.0f} s or Ctrl-C"
    say(f"dashboard stays up at {base}/ until {until}")
    try:
        deadline = time.monotonic() + (seconds if seconds > 0 else float("inf"))
        while time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
