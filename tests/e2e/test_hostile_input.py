"""HTML and script in every string field of events stay inert text on the dashboard (issue 18)."""

from __future__ import annotations

import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from stream.client import EventProducer
from stream.settings import Settings
from stream.worker.web import CSP
from tests.e2e.test_dashboard import (  # noqa: F401 (chromium, worker: fixtures used by name)
    LAUNCH_ARGS,
    TOKEN,
    chromium,
    processed,
    worker,
)
from tests.helpers import poll_until

pytestmark = pytest.mark.e2e

# The policy the worker's pages are served with (stream/worker/web.py); the page must work
# under it: no inline script, no inline style attribute, nothing from another origin.

# Each would run script (or call alert) if a field reached the DOM as markup; the entity one
# must show as written (neither decoded nor escaped twice).
PAYLOADS = (
    '<img src=x onerror="window.__pwned=1;alert(1)">',
    "<script>window.__pwned=1;alert(1)</script>",
    '"><svg onload="window.__pwned=1;alert(1)">',
    "'><iframe src=\"javascript:parent.__pwned=1\"></iframe>",
    "javascript:window.__pwned=1;alert(1)//",
    '<a href="javascript:window.__pwned=1" id=x>x</a>',
    "</td></tr><tr><td><b onmouseover=window.__pwned=1>hover</b>",
    "&lt;b&gt;entity&amp;&#39;",
)
# Every user buys 4 times from 5 devices: 3 risk alerts each, so every user is in the
# decisions table (it lists every alert but only 1 recommendation in 50) and has reasons.
KINDS = ("view", "click", "add_to_cart", "purchase", "purchase", "purchase", "purchase")


def uid(i: int) -> str:
    return f"{PAYLOADS[i]} u{i}"


def hostile_events(now_ms: int) -> list[dict[str, Any]]:
    """Every string field of every event holds a payload; each user's last event comes last."""
    out: list[dict[str, Any]] = []
    for i, p in enumerate(PAYLOADS):
        common = {"user_id": uid(i), "category": f"{p} c", "session_id": f"{p} s",
                  "ip": f"{p} ip", "attrs": {f"{p} k": f"{p} v"}}
        for n, kind in enumerate(KINDS):
            ev = {**common, "event_id": f"{p} e{i}.{n}", "type": kind,
                  "item_id": f"{p} item{i}.{n % 2}", "ts": now_ms + n * 5000,
                  "device_id": f"{p} d{n % 5}"}
            if kind == "purchase":
                ev["price"] = 200.0
            out.append(ev)
    return out


def last_event(events: list[dict[str, Any]], i: int) -> dict[str, Any]:
    return [e for e in events if e["user_id"] == uid(i)][-1]


def _is_page(url: str) -> bool:
    return urllib.parse.urlsplit(url).path in ("/", "/ui")


def serve_page(page: Any, csp: str | None) -> None:
    """The dashboard document without any CSP (so escaping alone is tested) or, with `csp`,
    under the header the worker serves, or `csp` while the worker serves none."""

    def handler(route: Any) -> None:
        resp = route.fetch()
        headers = dict(resp.headers)
        served = headers.pop("content-security-policy", None)
        if csp is not None:
            headers["content-security-policy"] = served or csp
        route.fulfill(response=resp, headers=headers)

    page.route(_is_page, handler)


INERT_JS = """() => ({
  pwned: window.__pwned === undefined ? null : String(window.__pwned),
  handlers: [...document.querySelectorAll('*')].flatMap((e) => [...e.attributes]
    .filter((a) => a.name.startsWith('on') ||
      (/(^|:)(href|src|action|formaction)$/.test(a.name) && /^\\s*javascript:/i.test(a.value)))
    .map((a) => `${e.tagName} ${a.name}`)),
  injected: [...document.querySelectorAll('img, iframe, object, embed, a[href], ' +
    'body script, #decisions svg, #inspector td svg')].map((e) => e.outerHTML.slice(0, 80)),
  violations: window.__csp || [],
})"""


def assert_inert(page: Any, dialogs: list[str], where: str) -> None:
    found = page.evaluate(INERT_JS)
    assert found["pwned"] is None, f"{where}: a payload ran (window.__pwned={found['pwned']})"
    assert not dialogs, f"{where}: a payload opened dialogs {dialogs}"
    assert not found["handlers"], f"{where}: event data became handlers {found['handlers']}"
    assert not found["injected"], f"{where}: event data became elements {found['injected']}"


def open_page(ctx: Any, csp: str | None, dialogs: list[str], errors: list[str]) -> Any:
    page = ctx.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.add_init_script("document.addEventListener('securitypolicyviolation', (e) => "
                         "(window.__csp = window.__csp || []).push("
                         "`${e.violatedDirective} ${e.blockedURI} ${e.sample}`));")
    serve_page(page, csp)
    return page


def inspect_user(page: Any, last: dict[str, Any]) -> None:
    """The inspector shows the user's latest event, its item id and its alert, each field
    as the literal text that was produced."""
    from playwright.sync_api import expect

    insp = page.locator("#inspector")
    event_id = last["event_id"]
    expect(insp.locator("#insp-latest")).to_have_attribute("data-event", event_id)
    expect(insp.locator("#insp-latest")).to_contain_text(event_id)
    expect(insp.locator(".timeline + .metrics")).to_contain_text(last["item_id"])
    expect(insp.locator("#insp-risk .badge.alert")).to_be_visible()
    expect(insp.locator("h3 small.mono").first).to_contain_text(event_id)
    expect(insp.locator("#insp-decisions tr[data-kind=risk_alert]").first).to_be_visible()


def test_event_fields_render_as_inert_text(
        chromium: str, worker: tuple[Settings, str], tmp_path: Path) -> None:  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    settings, base = worker
    events = hostile_events(int(time.time() * 1000))
    with EventProducer(settings) as producer:  # validates: every payload event is valid
        for ev in events:
            producer.send(ev)
        producer.flush()
    poll_until(lambda: processed(base) >= len(events), 30, 0.2, "hostile events processed")
    dialogs: list[str] = []
    errors: list[str] = []
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            tempfile.mkdtemp(prefix="chromium-", dir=tmp_path), executable_path=chromium,
            headless=True, args=LAUNCH_ARGS, viewport={"width": 1440, "height": 1000})
        try:
            # 1. escaping alone (no CSP to mask a hole): the decisions table, then each user
            # from its link, from a #user= link, and an unknown one typed into the form
            page = open_page(ctx, None, dialogs, errors)
            page.goto(f"{base}/?token={TOKEN}")
            table = page.locator("#decisions")
            for i in range(len(PAYLOADS)):
                expect(table).to_contain_text(uid(i))
            expect(table.locator("tr[data-kind=risk_alert]").first).to_be_visible()
            assert_inert(page, dialogs, "decisions table")
            for i in range(len(PAYLOADS)):
                table.locator("a.user").get_by_text(uid(i), exact=True).first.click()
                inspect_user(page, last_event(events, i))
                assert_inert(page, dialogs, f"inspector of user {i}")
            for i in range(len(PAYLOADS)):  # a fresh load each (not a same-page #change)
                page.goto("about:blank")
                page.goto(f"{base}/#user={urllib.parse.quote(uid(i), safe='')}")
                expect(page.locator("#user-id")).to_have_value(uid(i))
                inspect_user(page, last_event(events, i))
                assert_inert(page, dialogs, f"#user= link of user {i}")
            nobody = f"{PAYLOADS[0]} {PAYLOADS[1]} nobody"
            page.fill("#user-id", nobody)
            page.click("#inspect-form button")
            expect(page.locator("#inspector [data-state=unknown]")).to_contain_text(nobody)
            assert_inert(page, dialogs, "unknown user")

            # 2. under the CSP: the same views render with nothing blocked
            page = open_page(ctx, CSP, dialogs, errors)
            page.goto(f"{base}/#user={urllib.parse.quote(uid(0), safe='')}")
            for i in range(len(PAYLOADS)):
                expect(page.locator("#decisions")).to_contain_text(uid(i))
            inspect_user(page, last_event(events, 0))
            expect(page.locator("#risk-reasons .reason .bar").first).to_be_visible()
            poll_until(lambda: int(page.get_attribute("#chart-throughput", "data-points") or 0)
                       >= 2, 10, 0.2, "a drawn throughput chart")
            expect(page.locator("#chart-throughput .legend .sw").first).to_be_visible()
            assert_inert(page, dialogs, "page under the CSP")
            violations = page.evaluate("window.__csp || []")
            assert not violations, f"the page breaks its CSP: {violations}"
            assert not errors, errors
        finally:
            ctx.close()


def test_pages_are_served_with_the_csp(worker: tuple[Settings, str]) -> None:  # noqa: F811
    _, base = worker
    for path in ("/", "/ui"):
        with urllib.request.urlopen(f"{base}{path}", timeout=5) as resp:
            assert resp.headers.get("Content-Security-Policy") == CSP, path
            assert resp.headers.get("X-Content-Type-Options") == "nosniff", path

