"""`lamstream demo`: broker + worker + replay of real events, live decisions and a summary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from model.stats import percentile
from stream.errors import InfraError
from stream.settings import Settings

_SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
_DEFAULT_DATA = _SHARED / "taobao" / "UserBehavior-timesorted-96k.csv"
_SAMPLE = Path(__file__).resolve().parents[1] / "sample" / "events.jsonl"


def default_data() -> Path:
    return _DEFAULT_DATA if _DEFAULT_DATA.exists() else _SAMPLE


def _get_json(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_healthy(base: str, proc: subprocess.Popen[bytes] | None, timeout: float,
                 log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise InfraError(f"worker exited with {proc.returncode}:\n{tail}")
        try:
            if _get_json(f"{base}/health").get("status") == "ok":
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise InfraError(f"worker at {base} not healthy after {timeout:.0f}s")


def start_worker(settings: Settings, data_dir: Path, log: Path,
                 extra_env: dict[str, str] | None = None, command: str = "worker"
                 ) -> subprocess.Popen[bytes]:
    """`lamstream <command>` (worker, feedback, trainer) in a new session, logging to `log`."""
    env = dict(os.environ)
    env.update({
        "LAMSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap,
        "LAMSTREAM_DATA_DIR": str(data_dir),
        "LAMSTREAM_WEB_PORT": str(settings.web_port),
        "LAMSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "LAMSTREAM_APP_ID": settings.app_id,
        "LAMSTREAM_PARTITIONS": str(settings.partitions),
        "LAMSTREAM_SESSION_TIMEOUT_S": str(settings.session_timeout_s),
        "LAMSTREAM_LOG_LEVEL": "WARNING",
    })
    env.update(extra_env or {})
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "stream.cli.main", command], env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


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


def run_demo(settings: Settings, *, data: str | None, events: int, rate: float,
             hold: float = 0.0) -> None:
    from model.datasets import iter_payloads
    from stream.cli.main import broker_for
    from stream.client import EventProducer, PredictionSubscriber
    from stream.kafka.admin import ensure_topics

    console = Console(stderr=False)
    path = Path(data) if data else default_data()
    console.print(f"[bold]lamstream demo[/]: replaying up to {events} events from {path}")
    tmp = Path(tempfile.mkdtemp(prefix="lamstream-demo-"))
    with broker_for(settings) as s:
        ensure_topics(s)
        base = f"http://127.0.0.1:{s.web_port}"
        log = tmp / "worker.log"
        proc = start_worker(s, tmp / "data", log)
        try:
            wait_healthy(base, proc, 120, log)
            console.print(f"worker ready: dashboard {base}/  features {base}/features/<user>")
            recs: list[float] = []
            alerts: list[dict[str, Any]] = []
            dlq: list[Any] = []
            stop = threading.Event()
            shown = {"recs": 0}

            def listen() -> None:
                with PredictionSubscriber(s, topics=None, from_beginning=True) as sub:
                    while not stop.is_set():
                        for rec in sub.poll(0.5):
                            kind = type(rec).__name__
                            if kind == "Recommendation":
                                recs.append(rec.latency_ms)  # type: ignore[union-attr]
                                if len(recs) % 2000 == 1:
                                    shown["recs"] += 1
                                    items = ", ".join(i.item_id for i in rec.items[:5])  # type: ignore[union-attr]
                                    console.print(f"  [cyan]rec[/] user {rec.user_id} after "  # type: ignore[union-attr]
                                                  f"{rec.event_id}: {items} ... "  # type: ignore[union-attr]
                                                  f"({rec.model} {rec.latency_ms:.1f} ms)")  # type: ignore[union-attr]
                            elif kind == "RiskAlert":
                                alerts.append(rec.model_dump())
                                why = ", ".join(f"{r.feature}={r.value:g}"
                                                for r in rec.reasons[:3])  # type: ignore[union-attr]
                                console.print(f"  [red]ALERT[/] user {rec.user_id} score "  # type: ignore[union-attr]
                                              f"{rec.score:.2f}: {why}")  # type: ignore[union-attr]

            def listen_dlq() -> None:
                with PredictionSubscriber(s, topics=[s.topic_prefix + "events.dlq"],
                                          from_beginning=True) as sub:
                    while not stop.is_set():
                        for rec in sub.poll(0.5):
                            dlq.append(rec)
                            console.print(f"  [yellow]DLQ[/] {rec.error_kind}: "  # type: ignore[union-attr]
                                          f"{rec.error[:80]}")  # type: ignore[union-attr]

            threads = [threading.Thread(target=listen, daemon=True),
                       threading.Thread(target=listen_dlq, daemon=True)]
            for t in threads:
                t.start()

            sent = 0
            dup_payloads: list[tuple[bytes | None, bytes]] = []
            t0 = time.monotonic()
            with EventProducer(s, validate=False) as producer, Progress(
                TextColumn("replaying"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(), console=console, transient=False,
            ) as progress:
                task = progress.add_task("events", total=events)
                for key, value in iter_payloads(path):
                    k = key.encode() if key is not None else None
                    producer.send_raw(value, k)
                    sent += 1
                    if sent % 997 == 0:
                        dup_payloads.append((k, value))
                    if sent % 200 == 0:
                        progress.update(task, completed=sent)
                        ahead = sent / rate - (time.monotonic() - t0) if rate > 0 else 0
                        if ahead > 0:
                            time.sleep(ahead)
                    if sent >= events:
                        break
                progress.update(task, completed=sent)
                for k, value in dup_payloads:  # producer retries / replays
                    producer.send_raw(value, k)
                for k, value, _ in _injected(int(time.time() * 1000)):
                    producer.send_raw(value, k)
                producer.flush()
            total = sent + len(dup_payloads) + len(_injected(0))
            deadline = time.monotonic() + 120
            stats: dict[str, Any] = {}
            while time.monotonic() < deadline:
                stats = _get_json(f"{base}/api/stats")
                if stats["events"] >= total:
                    break
                time.sleep(0.5)
            elapsed = time.monotonic() - t0
            time.sleep(2.0)  # let the subscribers catch up
            stop.set()
            for t in threads:
                t.join(5)
            burst = _get_json(f"{base}/features/demo-burst") if stats else {}
            summary = {
                "events_sent": total, "events_processed": stats.get("events"),
                "dlq": stats.get("dlq"), "duplicates": stats.get("duplicates"),
                "late": stats.get("late"), "recommendations": stats.get("recommendations"),
                "risk_alerts": stats.get("alerts"),
                "throughput_eps": round(stats.get("events", 0) / elapsed, 1),
                "latency_p50_ms": _rounded(percentile(recs, 0.5)),
                "latency_p99_ms": _rounded(percentile(recs, 0.99)),
                "demo_burst_user_counts": burst.get("counts"),
            }
            console.print("[bold]summary[/]")
            for name, v in summary.items():
                console.print(f"  {name:>24}: {v}")
            if hold:
                _hold(console, base, hold)
        finally:
            stop_worker(proc)


def _hold(console: Console, base: str, seconds: float) -> None:
    """Keep broker and worker up after the replay so the dashboard can still be explored."""
    until = "Ctrl-C" if seconds < 0 else f"{seconds:.0f} s or Ctrl-C"
    console.print(f"dashboard stays up at {base}/ until {until}")
    try:
        deadline = time.monotonic() + (seconds if seconds > 0 else float("inf"))
        while time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
