"""The worker's views: every route bound to its worker, the token checked once for all the
views that show user data."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from pydantic import SecretStr

from stream.worker import web


class _Web:
    def json(self, value: Any, *, status: int = 200, **_: Any) -> tuple[int, Any]:
        return status, value


class _Sensors:
    def on_web_request_start(self, *_: Any, **__: Any) -> None:
        return None

    def on_web_request_end(self, *_: Any, **__: Any) -> None:
        return None


class _App:
    def __init__(self) -> None:
        self.pages: dict[str, type[web.WorkerView]] = {}
        self.timers: list[str] = []
        self.sensors = _Sensors()

    def page(self, path: str) -> Any:
        def register(view: type[web.WorkerView]) -> type[web.WorkerView]:
            self.pages[path] = view
            return view
        return register

    def timer(self, interval: float, *, name: str) -> Any:
        self.timers.append(name)
        return lambda fun: fun


def _worker(token: str | None) -> Any:
    return SimpleNamespace(app=_App(), settings=SimpleNamespace(
        api_token=SecretStr(token) if token else None))


def _request(headers: dict[str, str] | None = None, query: dict[str, str] | None = None
             ) -> Any:
    return SimpleNamespace(method="GET", match_info={}, headers=headers or {},
                           query=query or {})


def test_every_route_is_served_by_a_view_bound_to_its_own_worker() -> None:
    one, two = _worker(None), _worker(None)
    web.attach_views(one)
    web.attach_views(two)
    assert list(one.app.pages) == [path for path, _ in web.ROUTES]
    for path, view in web.ROUTES:
        assert issubclass(one.app.pages[path], view)
        assert one.app.pages[path].worker is one and two.app.pages[path].worker is two
    assert one.app.timers == ["dashboard-sampler"]


def test_views_with_user_data_want_the_token_the_others_do_not() -> None:
    protected = {path for path, view in web.ROUTES if view.protected}
    assert protected == {"/features/{user_id}", "/api/recent", "/api/users/{user_id}"}


def test_a_protected_view_answers_401_without_the_token_and_serves_with_it() -> None:
    worker = _worker("s3cret")
    web.attach_views(worker)
    recent = SimpleNamespace(decisions=[{"kind": "recommendation"}])
    worker.ingest = SimpleNamespace(recent=recent)
    view = worker.app.pages["/api/recent"](worker.app, _Web())

    def get(request: Any) -> Any:
        return asyncio.run(view.dispatch(request))

    assert get(_request()) == (401, {"error": "missing or wrong token"})
    assert get(_request(headers={"Authorization": "Bearer wrong"}))[0] == 401
    served = (200, {"decisions": recent.decisions})
    assert get(_request(headers={"Authorization": "Bearer s3cret"})) == served
    assert get(_request(query={"token": "s3cret"})) == served
