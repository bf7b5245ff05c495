"""The live dashboard in headless Chromium, against a worker on the test broker."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from model.datasets import iter_payloads
from stream.client import EventProducer
from stream.devtools.procs import start_worker, stop_worker, wait_healthy
from stream.kafka.admin import ensure_topics
from stream.kafka.broker import free_port
from stream.settings import Settings
from tests.helpers import poll_until

pytestmark = pytest.mark.e2e

SAMPLE = Path(__file__).resolve().parents[2] / "stream" / "sample" / "events.jsonl"
TOKEN = "e2e-secret"
FEEDBACK_PORT, TRAINER_PORT = free_port(), free_port()
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync"]
SHOPPER = "e2e-shopper"  # a user whose every event the test makes, so every number is known
BURST = "e2e-burst"  # 8 purchases of 200 within 40 s from 5 devices: the rule score alerts


@pytest.fixture(scope="session")
def chromium() -> str:
    """Chromium's path; checked before a worker is started for nothing."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.skip("Chromium is not installed and could not be installed here: `make test` "
                    "installs it with apt-get (Debian packages chromium, chromium-driver) "
                    "when apt-get is usable as root")
    return path


def processed(base: str) -> int:
    with urllib.request.urlopen(f"{base}/api/stats", timeout=2) as resp:
        return int(json.loads(resp.read())["events"])


def shopper_events(now_ms: int) -> list[dict[str, Any]]:
    types = ["view"] * 6 + ["click"] * 3 + ["add_to_cart"] * 2 + ["purchase"]
    out = []
    for i, kind in enumerate(types):
        ev: dict[str, Any] = {"event_id": f"shop-{i}", "user_id": SHOPPER, "type": kind,
                              "item_id": f"item-{i % 4}", "ts": now_ms - (len(types) - i) * 2000,
                              "category": "books"}
        if kind == "purchase":
            ev["price"] = 30.0
        out.append(ev)
    return out


def burst_events(now_ms: int) -> list[dict[str, Any]]:
    return [{"event_id": f"burst-{i}", "user_id": BURST, "type": "purchase",
             "item_id": f"giftcard-{i % 2}", "ts": now_ms + i * 5000, "price": 200.0,
             "device_id": f"dev-{i % 5}", "ip": f"10.0.{i % 6}.1"} for i in range(8)]


def sample_expectation() -> tuple[str, Counter[str], int]:
    """The sample user with most events, their unique events per type, and all lines."""
    by_user: dict[str, dict[str, str]] = {}
    lines = 0
    for line in SAMPLE.read_bytes().splitlines():
        if not line.strip():
            continue
        lines += 1
        ev = orjson.loads(line)
        by_user.setdefault(ev["user_id"], {})[ev["event_id"]] = ev["type"]
    user = max(by_user, key=lambda u: len(by_user[u]))
    return user, Counter(by_user[user].values()), lines


@pytest.fixture
def worker(settings_factory: Callable[..., Settings], tmp_path: Path
           ) -> Iterator[tuple[Settings, str]]:
    settings = settings_factory(partitions=2)
    ensure_topics(settings)
    log = tmp_path / "worker.log"
    # the Learning panel asks these; nothing listens there until the test starts stand-ins
    proc = start_worker(settings, tmp_path / "worker", log, extra_env={
        "LAMSTREAM_API_TOKEN": TOKEN, "LAMSTREAM_STORE": "memory",
        "LAMSTREAM_FEEDBACK_URL": f"http://127.0.0.1:{FEEDBACK_PORT}",
        "LAMSTREAM_TRAINER_URL": f"http://127.0.0.1:{TRAINER_PORT}"})
    base = f"http://127.0.0.1:{settings.web_port}"
    try:
        wait_healthy(base, proc, 60, log)
        yield settings, base
    finally:
        stop_worker(proc)


@contextlib.contextmanager
def learning_processes() -> Iterator[None]:
    """Stand-ins for `lamstream feedback` and `lamstream trainer`: their own probe servers
    and health reports (stream.feedback.web, stream.trainer.web) over made-up counters."""
    from types import SimpleNamespace

    from stream.feedback.app import JoinStats
    from stream.feedback.risk_labels import LabelStats
    from stream.feedback.web import feedback_health
    from stream.probes import LagProbe, ProbeServer
    from stream.trainer.web import trainer_health

    class Model:
        def stats(self) -> dict[str, Any]:
            return {"seen": 120, "trained": 100, "serving": "v3"}
    stats = JoinStats(decisions=9)
    for policy, rewarded in [("greedy", True), ("greedy", False), ("softmax", True),
                             ("softmax", True)]:
        stats.add_feedback(policy, rewarded)
    ready = SimpleNamespace(is_set=lambda: True)
    fw = SimpleNamespace(
        app=SimpleNamespace(tables=SimpleNamespace(_recovery=SimpleNamespace(completed=ready)),
                            should_stop=False),
        join=SimpleNamespace(stats=stats), risk=SimpleNamespace(stats=LabelStats()))
    ct = SimpleNamespace(trainer=Model(), risk=Model(), risk_gates=[], published=["v3"],
                         gates=[{"gate": {"passed": True}, "published": "v3"}],
                         risk_published=[], sequence=Model(), sequence_gates=[],
                         sequence_published=[])
    lag = LagProbe(Settings(), "g", ())
    servers = [ProbeServer("127.0.0.1", FEEDBACK_PORT, lambda: feedback_health(fw, lag, 0.0),
                           list).start(),
               ProbeServer("127.0.0.1", TRAINER_PORT, lambda: trainer_health(ct, lag, 0.0),
                           list).start()]
    try:
        yield
    finally:
        for server in servers:
            server.close()


def produce(settings: Settings, done: threading.Event, sent: list[int]) -> None:
    """The sample file over ~6 s (so the charts move), then the shopper and the burst."""
    with EventProducer(settings, validate=False) as producer:
        for n, (key, value) in enumerate(iter_payloads(SAMPLE), 1):
            producer.send_raw(value, key.encode() if key is not None else None)
            if n % 100 == 0:
                producer.flush()
                time.sleep(0.2)
            sent[0] = n
        now_ms = int(time.time() * 1000)
        for ev in shopper_events(now_ms) + burst_events(now_ms):
            producer.send(ev)
            sent[0] += 1
        producer.flush()
    done.set()


def test_dashboard_shows_the_stream_and_explains_a_user(
        chromium: str, worker: tuple[Settings, str], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    settings, base = worker
    user, user_counts, sample_lines = sample_expectation()
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="chromium-", dir=tmp_path), executable_path=chromium,
            headless=True, args=LAUNCH_ARGS, viewport={"width": 1440, "height": 1000})
        try:
            page = ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{base}/")

            # before any event: the page says why it is empty; decisions need the token
            expect(page.locator("#status")).to_have_attribute("data-state", "ok")
            expect(page.locator("#banner")).to_contain_text("No events yet")
            expect(page.locator("#decisions")).to_contain_text("requires an API token")
            expect(page.locator("#learning [data-state=no-feedback]")).to_contain_text(
                "Feedback is not produced yet")
            page.fill("#token", TOKEN)
            page.click("#token-form button")

            done, sent = threading.Event(), [0]
            producer = threading.Thread(target=produce, args=(settings, done, sent),
                                        daemon=True)
            producer.start()

            # the counts move while events flow
            def kpi(name: str) -> int:
                return int(page.get_attribute(f"#kpi-{name}", "data-value") or 0)

            first = poll_until(lambda: kpi("events"), 20, 0.2, "first events on the page")
            poll_until(lambda: kpi("events") > first, 10, 0.2, "events count increasing")
            poll_until(lambda: kpi("decisions") > 0, 10, 0.2, "decisions on the page")
            chart = page.locator("#chart-throughput")
            poll_until(lambda: float(chart.get_attribute("data-max") or 0) > 0, 10, 0.2,
                       "a non-zero throughput in the chart")
            assert int(chart.get_attribute("data-points") or 0) >= 2
            expect(chart.locator("path[data-series=events_ps]")).to_have_count(1)
            expect(page.locator("#decisions tbody tr[data-kind=recommendation]").first
                   ).to_be_visible()
            expect(page.locator("#lag .row")).to_have_count(2)
            expect(page.locator("#models")).to_contain_text("covisitation")

            assert done.wait(30), "producer did not finish"
            total = sent[0]
            poll_until(lambda: processed(base) >= total, 30, 0.2,
                       f"worker processed all {total} events")
            assert total == sample_lines + 12 + 8
            expect(page.locator("#kpi-events .value")).to_have_text(f"{total:,}")
            expect(page.locator("#chart-latency path[data-series=e2e_p50]")).to_have_count(1)

            # inspector: the shopper's numbers are exactly what was produced
            page.fill("#user-id", SHOPPER)
            page.click("#inspect-form button")
            insp = page.locator("#inspector")
            expect(insp.locator("#insp-events-total")).to_have_text("12")
            for kind, n in (("view", 6), ("click", 3), ("add_to_cart", 2), ("purchase", 1)):
                expect(insp.locator(f"#insp-counts [data-type={kind}] b")).to_have_text(str(n))
                expect(insp.locator(f"tr[data-window='1m'] td[data-type={kind}]")
                       ).to_have_text(str(n))
            expect(insp.locator("tr[data-window='1m'] td[data-type=spend]")).to_have_text("30")
            expect(insp.locator("#insp-timeline")).to_have_attribute("data-events", "12")
            expect(insp.locator("#insp-latest")).to_have_attribute("data-event", "shop-11")

            # a sample user: counts per type match the file
            page.fill("#user-id", user)
            page.click("#inspect-form button")
            expect(insp.locator("#insp-events-total")).to_have_text(
                f"{sum(user_counts.values()):,}")
            for kind, n in user_counts.items():
                expect(insp.locator(f"#insp-counts [data-type={kind}] b")).to_have_text(f"{n:,}")

            # the burst: an alert whose reasons are drawn as bars, from the decisions table
            page.locator(f"#decisions a.user[data-user={BURST}]").first.click()
            expect(insp.locator("#insp-risk .badge.alert")).to_be_visible()
            for feature in ("distinct_devices_24h", "count_purchase_1m"):
                expect(insp.locator(f"#risk-reasons .reason[data-feature={feature}] .bar")
                       ).to_be_visible()
            expect(insp.locator("#insp-decisions tr[data-kind=risk_alert]").first
                   ).to_be_visible()
            assert float(insp.locator("#insp-risk").get_attribute("data-score") or 0) >= 0.8

            # the Learning panel fills from the feedback join's and the trainer's /health
            with learning_processes():
                learning = page.locator("#learning")
                expect(learning.locator("[data-state=feedback] [data-policy=greedy]")
                       ).to_contain_text("reward 0.500", timeout=15_000)
                expect(learning.locator("#learning-feedback")).to_contain_text("4")
                expect(learning.locator("[data-state=trainer]")).to_contain_text("v3")

            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"dashboard screenshot: {shot}")
            assert shot.stat().st_size > 10_000
            assert not errors, errors
        finally:
            ctx.close()
