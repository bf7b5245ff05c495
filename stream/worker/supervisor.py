"""`lamstream worker --processes N`: N group members on one host under one supervisor process.

A worker is one Python process and so uses one core at most; one process per core is how a
host's cores all work. The supervisor starts N ordinary workers (`lamstream worker` with
LAMSTREAM_WORKER_PROCESSES=1) of the same consumer group, each with its own state directory
(DATA_DIR/p0, p1, ...), web port (WEB_PORT + i) and advertised URL, so Faust's assignor
gives each its partitions and `/features/{user}` is routed among them as between workers
on different hosts (stream.worker.routing). It forwards SIGTERM/SIGINT to every child and
waits for them; a child that dies is logged and restarted after a backoff, and one that
keeps dying (RestartPolicy) stops the supervisor with a non-zero exit.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from stream.devtools.procs import link_models, start_worker
from stream.errors import UsageError
from stream.settings import Settings

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 60.0  # a child's graceful stop (commit, flush, close tables), then SIGKILL


def resolve_processes(spec: str | int, cpu_count: int | None = None) -> int:
    """How many processes `spec` means: a count >= 1, or `auto`, one per core the operating
    system reports (os.cpu_count(): the host's or the container's cores, not a CPU quota)."""
    if spec == "auto":
        return max(1, cpu_count if cpu_count is not None else (os.cpu_count() or 1))
    try:
        n = int(spec)
    except ValueError:
        raise UsageError(f"--processes takes a count or auto, got {spec!r}") from None
    if n < 1:
        raise UsageError(f"--processes needs a count >= 1, got {spec!r}")
    return n


@dataclass(frozen=True)
class ChildPlan:
    """Where child `index` keeps its state and serves HTTP."""

    index: int
    data_dir: Path
    web_port: int
    advertised_url: str

    def settings(self, base: Settings) -> Settings:
        """`base` as this child runs it."""
        return base.model_copy(update={"data_dir": self.data_dir, "web_port": self.web_port,
                                       "web_advertised_url": self.advertised_url,
                                       "worker_processes": "1"})


def _shift_port(url: str, offset: int, default_port: int) -> str:
    parts = urllib.parse.urlsplit(url)
    port = (parts.port or default_port) + offset
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{host}:{port}"))


def plan_children(settings: Settings, n: int) -> list[ChildPlan]:
    """Child i: DATA_DIR/p<i>, WEB_PORT + i, and the advertised URL's port shifted by i."""
    if settings.web_port + n - 1 > 65535:
        raise UsageError(f"{n} processes need web ports {settings.web_port}.."
                         f"{settings.web_port + n - 1}, past 65535")
    plans = []
    for i in range(n):
        port = settings.web_port + i
        if settings.web_advertised_url is not None:
            url = _shift_port(settings.web_advertised_url, i, settings.web_port)
        else:
            url = settings.model_copy(update={"web_port": port}).advertised_url()
        plans.append(ChildPlan(i, settings.data_dir / f"p{i}", port, url))
    return plans


@dataclass
class RestartPolicy:
    """A dead child is restarted after `backoff_s`, doubled for each death of it within
    `window_s` (at most `max_backoff_s`); its `max_deaths`-th death within `window_s` means
    it cannot run here (bad settings, a broken model, no memory), so the supervisor gives up."""

    max_deaths: int = 5
    window_s: float = 60.0
    backoff_s: float = 1.0
    max_backoff_s: float = 16.0
    deaths: dict[int, deque[float]] = field(default_factory=dict)

    def record(self, index: int, now: float) -> float | None:
        """Child `index` died at `now`: seconds to wait before restarting it, None to give up."""
        recent = self.deaths.setdefault(index, deque())
        recent.append(now)
        while recent and recent[0] <= now - self.window_s:
            recent.popleft()
        if len(recent) >= self.max_deaths:
            return None
        return float(min(self.max_backoff_s, self.backoff_s * 2 ** (len(recent) - 1)))


class Child(Protocol):
    """What the supervisor needs of a child process (subprocess.Popen has it)."""

    pid: int

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


Spawn = Callable[[ChildPlan], Child]


@dataclass
class Supervisor:
    """Runs one child per plan until stopped (`stop(sig)`), restarting those that die."""

    plans: list[ChildPlan]
    spawn: Spawn
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    children: dict[int, Child] = field(default_factory=dict)
    restart_at: dict[int, float] = field(default_factory=dict)
    stop_signal: int | None = None

    def stop(self, sig: int) -> None:
        """Ask the loop to forward `sig` to every child and return (safe in a signal handler)."""
        self.stop_signal = sig

    def run(self, poll_s: float = 0.2) -> int:
        """Until stopped (0) or a child keeps dying (1); every child has exited on return."""
        for plan in self.plans:
            self.children[plan.index] = self.spawn(plan)
        code = 0
        while self.stop_signal is None:
            if not self.check():
                code = 1
                break
            self.sleep(poll_s)
        self.shutdown(self.stop_signal or signal.SIGTERM)
        return code

    def check(self) -> bool:
        """Restart the children whose backoff is over, note the dead; False to give up."""
        now = self.clock()
        for plan in self.plans:
            i = plan.index
            due = self.restart_at.get(i)
            if due is not None:
                if now >= due:
                    del self.restart_at[i]
                    log.warning("restarting worker process p%d", i)
                    self.children[i] = self.spawn(plan)
                continue
            rc = self.children[i].poll()
            if rc is None:
                continue
            wait = self.policy.record(i, now)
            if wait is None:
                log.error("worker process p%d (pid %d) exited with %d, %d times in %.0f s: "
                          "giving up", i, self.children[i].pid, rc, self.policy.max_deaths,
                          self.policy.window_s)
                return False
            log.error("worker process p%d (pid %d) exited with %d; restarting it in %.0f s",
                      i, self.children[i].pid, rc, wait)
            self.restart_at[i] = now + wait
        return True

    def shutdown(self, sig: int, timeout: float = STOP_TIMEOUT_S) -> None:
        """Forward `sig` to every live child, wait for each, SIGKILL one that overstays."""
        live = [c for i, c in self.children.items()
                if i not in self.restart_at and c.poll() is None]
        for child in live:
            child.send_signal(sig)
        deadline = self.clock() + timeout
        for child in live:
            try:
                child.wait(max(0.1, deadline - self.clock()))
            except subprocess.TimeoutExpired:
                log.error("worker process pid %d did not stop in %.0f s: killed", child.pid,
                          timeout)
                child.kill()
                child.wait()


def run_supervised(settings: Settings, n: int, spawn: Spawn | None = None) -> int:
    """N workers of `settings` (on its broker, topics created) until SIGTERM/SIGINT; the exit
    code of the supervisor."""
    plans = plan_children(settings, n)
    for plan in plans:
        share_models(settings.data_dir, plan.data_dir)

    def start(plan: ChildPlan) -> Child:
        env = {"LAMSTREAM_LOG_LEVEL": settings.log_level,
               "LAMSTREAM_WEB_ADVERTISED_URL": plan.advertised_url,
               "LAMSTREAM_WORKER_PROCESSES": "1"}
        if settings.predictor:
            env["LAMSTREAM_PREDICTOR"] = settings.predictor
        return start_worker(plan.settings(settings), plan.data_dir, None, extra_env=env)

    sup = Supervisor(plans, spawn or start)

    def on_signal(signum: int, frame: Any) -> None:
        sup.stop(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for plan in plans:
            log.info("worker process p%d: %s, state in %s", plan.index,
                        plan.advertised_url, plan.data_dir)
        return sup.run()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def share_models(data_dir: Path, child_dir: Path) -> None:
    """Give a child's state dir the host's registry (DATA_DIR/models, a link), so every
    process serves what the trainer publishes there."""
    models = data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    link = child_dir / "models"
    if link.is_symlink() and link.resolve() == models.resolve():
        return
    link_models(models, child_dir)
