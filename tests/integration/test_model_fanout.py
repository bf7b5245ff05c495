"""Every worker of a group applies every model announcement, and a late one starts on it."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from model.recommenders.base import NEIGHBOR_METHODS
from model.registry import ModelRegistry
from model.train.pipeline import train_recommender
from stream.client import announce_model
from stream.devtools.procs import start_worker, stop_worker, wait_healthy
from stream.kafka.admin import ensure_topics
from stream.kafka.broker import free_port
from stream.settings import Settings
from tests.helpers import poll_until
from tests.integration.test_model_swap import SAMPLE, TINY
from tests.integration.test_worker import encode, get_json, make_events, send

pytestmark = pytest.mark.integration


@contextmanager
def running(settings: Settings, data_dir: Path, tmp: Path, name: str
            ) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_worker(settings, data_dir, tmp / f"{name}.log",
                        extra_env={"LAMSTREAM_LOG_LEVEL": "INFO"})
    try:
        yield proc
    finally:
        stop_worker(proc)


def worker_dir(tmp: Path, name: str, registry: Path) -> Path:
    """A worker's own data dir sharing the one model registry (as a shared volume would)."""
    d = tmp / name
    d.mkdir()
    (d / "models").symlink_to(registry / "models", target_is_directory=True)
    return d


def health(base: str) -> dict[str, str | None]:
    return get_json(f"{base}/health")[1]  # type: ignore[no-any-return]


def test_three_workers_all_serve_an_announcement_a_late_one_too_and_rollback_reaches_all(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    s = settings_factory(partitions=4)
    ensure_topics(s)
    registry = s.data_dir
    v1, _ = train_recommender(SAMPLE, registry, cfg=TINY, methods=NEIGHBOR_METHODS)
    events = iter(range(10_000))

    def flow() -> None:  # a few events for every partition: each worker runs a batch
        batch = make_events(200, users=60, seed=next(events))
        send(s, encode(batch))

    def all_serve(bases: list[str], version: str) -> Callable[[], bool]:
        def check() -> bool:
            flow()
            return all(health(b)["model_version"] == version for b in bases)
        return check

    with ExitStack() as stack:
        ports = [free_port() for _ in range(4)]
        bases = [f"http://127.0.0.1:{p}" for p in ports]
        procs = []
        for i in range(3):  # started together: each takes seconds to become healthy
            w = s.model_copy(update={"web_port": ports[i]})
            procs.append(stack.enter_context(
                running(w, worker_dir(tmp_path, f"w{i}", registry), tmp_path, f"w{i}")))
        for i in range(3):
            wait_healthy(bases[i], procs[i], 90, tmp_path / f"w{i}.log")
        assert [health(b)["model_version"] for b in bases[:3]] == [v1] * 3

        v2, _ = train_recommender(SAMPLE, registry, cfg=TINY, methods=NEIGHBOR_METHODS)
        announce_model(s, "recommender", v2)
        # idle workers swap at their next batch; /health names the loaded version meanwhile
        poll_until(lambda: all(v2 in (health(b)["model_version"],
                                      health(b)["model_version_pending"])
                               for b in bases[:3]),
                   timeout=30, interval=0.5, message="every worker loaded v2")
        poll_until(all_serve(bases[:3], v2), timeout=60, interval=1.0,
                   message="every worker serves v2")

        # a worker started after the announcement starts on the registry's latest
        w = s.model_copy(update={"web_port": ports[3]})
        late = stack.enter_context(
            running(w, worker_dir(tmp_path, "w3", registry), tmp_path, "w3"))
        wait_healthy(bases[3], late, 90, tmp_path / "w3.log")
        assert health(bases[3])["model_version"] == v2

        back = ModelRegistry(registry).rollback("recommender")
        assert back == v1
        announce_model(s, "recommender", v1, "rollback")
        poll_until(all_serve(bases, v1), timeout=60, interval=1.0,
                   message="the rollback reaches all four workers")
        assert all(health(b)["model_version_pending"] is None for b in bases)
