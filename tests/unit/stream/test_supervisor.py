"""The worker supervisor: ports, state dirs and URLs per child, auto, and the restart policy."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stream.errors import UsageError
from stream.settings import Settings
from stream.worker.supervisor import (
    ChildPlan,
    RestartPolicy,
    Supervisor,
    plan_children,
    resolve_processes,
    share_models,
)


def test_resolve_processes_counts_and_auto() -> None:
    assert resolve_processes("1") == 1
    assert resolve_processes("3") == 3
    assert resolve_processes("auto", cpu_count=6) == 6
    assert resolve_processes("auto") >= 1
    for bad in ("0", "-2", "many"):
        with pytest.raises(UsageError):
            resolve_processes(bad)


def test_the_setting_accepts_a_count_or_auto_only() -> None:
    assert Settings(worker_processes="auto").worker_processes == "auto"
    assert Settings().worker_processes == "1"
    with pytest.raises(ValueError):
        Settings(worker_processes="0")


def test_each_child_has_its_own_state_dir_port_and_url(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, web_port=7000)
    plans = plan_children(s, 3)
    assert [p.data_dir for p in plans] == [tmp_path / f"p{i}" for i in range(3)]
    assert [p.web_port for p in plans] == [7000, 7001, 7002]
    assert [p.advertised_url for p in plans] == [f"http://127.0.0.1:{7000 + i}"
                                                 for i in range(3)]
    child = plans[2].settings(s)
    assert (child.web_port, child.data_dir, child.worker_processes) == (7002, tmp_path / "p2",
                                                                        "1")
    assert child.advertised_url() == "http://127.0.0.1:7002"


def test_an_advertised_url_keeps_its_host_and_shifts_its_port(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, web_port=7000,
                 web_advertised_url="http://worker-0.lamstream:8000")
    assert [p.advertised_url for p in plan_children(s, 2)] == [
        "http://worker-0.lamstream:8000", "http://worker-0.lamstream:8001"]


def test_ports_past_the_last_one_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="65535"):
        plan_children(Settings(data_dir=tmp_path, web_port=65535), 2)


def test_children_share_the_hosts_registry(tmp_path: Path) -> None:
    share_models(tmp_path, tmp_path / "p0")
    share_models(tmp_path, tmp_path / "p0")  # a restart finds the link there
    (tmp_path / "models" / "x").write_text("published")
    assert (tmp_path / "p0" / "models" / "x").read_text() == "published"


def test_backoff_doubles_and_the_fifth_death_within_a_minute_gives_up() -> None:
    policy = RestartPolicy()
    assert [policy.record(0, t) for t in (0, 1, 2, 3)] == [1.0, 2.0, 4.0, 8.0]
    assert policy.record(1, 4) == 1.0  # each child has its own count
    assert policy.record(0, 4) is None


def test_deaths_older_than_the_window_are_forgotten() -> None:
    policy = RestartPolicy()
    for t in (0, 10, 20, 30):
        policy.record(0, t)
    assert policy.record(0, 75) == 4.0  # the deaths at 0 and 10 are past the window


class FakeChild:
    """A child process that lives until `die(rc)` or a signal."""

    pids = iter(range(100, 10_000))

    def __init__(self) -> None:
        self.pid = next(self.pids)
        self.rc: int | None = None
        self.signals: list[int] = []
        self.ignores_signals = False
        self.killed = False

    def poll(self) -> int | None:
        return self.rc

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if not self.ignores_signals:
            self.rc = 0

    def wait(self, timeout: float | None = None) -> int:
        if self.rc is None:
            raise subprocess.TimeoutExpired("fake", timeout or 0)
        return self.rc

    def kill(self) -> None:
        self.killed = True
        self.rc = -9


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def make_supervisor(n: int, clock: Clock, spawned: list[tuple[int, FakeChild]]) -> Supervisor:
    def spawn(plan: ChildPlan) -> FakeChild:
        child = FakeChild()
        spawned.append((plan.index, child))
        return child

    plans = [ChildPlan(i, Path(f"p{i}"), 7000 + i, f"http://h:{7000 + i}") for i in range(n)]
    return Supervisor(plans, spawn, clock=clock, sleep=clock.sleep)


def test_a_dead_child_is_restarted_after_its_backoff_and_the_others_are_left_alone() -> None:
    clock, spawned = Clock(), []
    sup = make_supervisor(2, clock, spawned)
    for plan in sup.plans:
        sup.children[plan.index] = sup.spawn(plan)
    spawned[1][1].rc = 1  # p1 dies
    assert sup.check()
    assert len(spawned) == 2 and 1 in sup.restart_at
    clock.now = 0.5
    assert sup.check() and len(spawned) == 2  # still backing off
    clock.now = 1.0
    assert sup.check()
    assert [i for i, _ in spawned] == [0, 1, 1]
    assert sup.children[1] is spawned[2][1] and sup.children[0] is spawned[0][1]


def test_a_child_that_keeps_dying_stops_the_supervisor_with_an_error() -> None:
    clock, spawned = Clock(), []
    sup = make_supervisor(2, clock, spawned)

    def sleep(s: float) -> None:
        clock.sleep(s)
        sup.children[0].rc = 3  # p0 dies again as soon as it is started

    sup.sleep = sleep
    assert sup.run(poll_s=0.5) == 1
    assert clock.now < 60
    assert sum(1 for i, _ in spawned if i == 0) == 5  # started once, restarted four times
    # the healthy child was stopped on the way out
    assert spawned[1][1].signals == [signal.SIGTERM]


def test_a_signal_is_forwarded_to_every_child_and_each_is_waited_for() -> None:
    clock, spawned = Clock(), []
    sup = make_supervisor(3, clock, spawned)

    def sleep(s: float) -> None:
        clock.sleep(s)
        sup.stop(signal.SIGINT)

    sup.sleep = sleep
    assert sup.run() == 0
    assert [c.signals for _, c in spawned] == [[signal.SIGINT]] * 3
    assert all(c.rc == 0 for _, c in spawned)


def test_a_child_that_ignores_the_signal_is_killed_after_the_timeout() -> None:
    clock, spawned = Clock(), []
    sup = make_supervisor(1, clock, spawned)
    sup.children[0] = sup.spawn(sup.plans[0])
    spawned[0][1].ignores_signals = True
    sup.shutdown(signal.SIGTERM, timeout=1)
    assert spawned[0][1].killed


@pytest.fixture
def cli_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, Any]]:
    """`lamstream worker` with the broker, topics, worker and supervisor replaced by notes."""
    from stream.cli import service

    calls: list[tuple[str, Any]] = []

    @contextmanager
    def fake_broker(s: Settings) -> Iterator[Settings]:
        calls.append(("broker", s.bootstrap))
        yield s

    monkeypatch.setattr(service, "broker_for", fake_broker)
    monkeypatch.setattr(service, "run_worker", lambda s: calls.append(("worker", s)))
    monkeypatch.setattr(service, "run_supervised",
                        lambda s, n: calls.append(("supervised", n)) or 0)
    monkeypatch.setattr("stream.kafka.admin.ensure_topics", lambda s: calls.append(("topics", 0)))
    monkeypatch.setenv("LAMSTREAM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("LAMSTREAM_WORKER_PROCESSES", raising=False)
    return calls


def test_one_process_runs_the_worker_in_the_commands_own_process(
        cli_calls: list[tuple[str, Any]]) -> None:
    from stream.cli.main import app

    assert CliRunner().invoke(app, ["worker"]).exit_code == 0
    assert [c for c, _ in cli_calls] == ["broker", "worker"]
    assert cli_calls[1][1].worker_processes == "1"


def test_n_processes_start_one_broker_the_topics_and_a_supervisor(
        cli_calls: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    from stream.cli.main import app

    assert CliRunner().invoke(app, ["worker", "--processes", "3"]).exit_code == 0
    assert cli_calls[0][0] == "broker" and cli_calls[1:] == [("topics", 0), ("supervised", 3)]
    cli_calls.clear()
    monkeypatch.setenv("LAMSTREAM_WORKER_PROCESSES", "auto")
    assert CliRunner().invoke(app, ["worker"]).exit_code == 0
    assert cli_calls[-1] == ("supervised", resolve_processes("auto"))


def test_a_supervisor_that_gave_up_exits_1(cli_calls: list[tuple[str, Any]],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from stream.cli import service
    from stream.cli.main import app

    monkeypatch.setattr(service, "run_supervised", lambda s, n: 1)
    r = CliRunner().invoke(app, ["worker", "--processes", "2"])
    assert r.exit_code == 1 and "kept dying" in r.output
    assert CliRunner().invoke(app, ["worker", "--processes", "0"]).exit_code == 2
