"""The processes the tools run: a broker for a command, `lamstream` subprocesses, CPU time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stream.errors import InfraError
from stream.kafka.broker import EmbeddedBroker
from stream.settings import Settings


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def broker_with_pid(settings: Settings, *, port: int | None = None,
                    log: Callable[[str], None] = _to_stderr
                    ) -> Iterator[tuple[Settings, int | None]]:
    """Settings pointing at a broker, and the broker's pid when this process started it: the
    configured cluster as it is, or a fresh embedded one (on `port`, else EMBEDDED_PORT)."""
    if not settings.embedded:
        yield settings, None
        return
    with EmbeddedBroker(port=port or settings.embedded_port) as broker:
        log(f"embedded broker (tansu) on {broker.bootstrap}")
        yield settings.model_copy(update={"bootstrap_servers": broker.bootstrap}), broker.pid


@contextmanager
def broker_for(settings: Settings, *, port: int | None = None,
               log: Callable[[str], None] = _to_stderr) -> Iterator[Settings]:
    """Settings pointing at a broker: the configured one, or a fresh embedded one."""
    with broker_with_pid(settings, port=port, log=log) as (s, _):
        yield s


def get_json(url: str, timeout: float = 5.0) -> Any:
    """GET a worker's JSON endpoint (urllib.error.HTTPError, an OSError, on 4xx/5xx)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def get_json_status(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """(HTTP status, JSON body or None): a 4xx/5xx answer is a result, not an error."""
    try:
        return 200, get_json(url, timeout)
    except urllib.error.HTTPError as exc:
        return exc.code, None


def wait_healthy(base: str, proc: subprocess.Popen[bytes] | None, timeout: float,
                 log: Path | None = None) -> None:
    """Until the worker at `base` answers /health ok; InfraError if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise InfraError(f"worker exited with {proc.returncode}:\n{tail}")
        try:
            if get_json(f"{base}/health", 2.0).get("status") == "ok":
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    raise InfraError(f"worker at {base} not healthy after {timeout:.0f}s")


def link_models(models: Path, data_dir: Path) -> None:
    """Give a worker's fresh state dir an existing registry (`<data_dir>/models`, a link: the
    worker only reads the models), so a tool's throwaway worker serves what was trained."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "models").symlink_to(models.resolve(), target_is_directory=True)


def start_worker(settings: Settings, data_dir: Path, log: Path | None,
                 extra_env: dict[str, str] | None = None, command: str = "worker"
                 ) -> subprocess.Popen[bytes]:
    """`lamstream <command>` (worker, feedback, trainer) in a new session, logging to `log`
    (None: to this process's stdout and stderr)."""
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
    argv = [sys.executable, "-m", "stream.cli", command]
    if log is None:
        return subprocess.Popen(argv, env=env, start_new_session=True)
    with log.open("ab") as out:  # the child holds its own copy of the descriptor
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM (a graceful stop: offsets committed, tables closed), SIGKILL after `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one process (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine (all processes, all cores) spent not idle, so far."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    ticks = [int(x) for x in first[1:9]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")
