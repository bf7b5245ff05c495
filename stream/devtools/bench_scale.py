"""`lamstream bench scale`: 1, 2, 3 ... workers in one consumer group, same events, same counts.

For each configuration the harness starts N worker processes (RocksDB store, fresh state dirs,
a fresh topic prefix and group id) on one broker and waits until the group has settled: every
partition of the events topic owned by exactly one worker and every worker owning some. Then
it pauses the workers (SIGSTOP), loads the same real event stream into the events topic,
and resumes them (SIGCONT): every configuration drains the same backlog, the producer does not
compete with the workers for CPU, and no rebalance happens while it is measured.

Throughput is counted from the first batch any worker processed to the last batch any worker
processed (`/api/stats` first_batch_at / last_batch_at). Correctness: the per-user lifetime
counts in the features table (the latest value per user on its changelog topic, which is what
a worker restores from) must equal the counts computed offline from the same events and those
of the first configuration; a sample of users is also asked over HTTP of every worker
(`GET /features/{user}?local=1`): exactly one worker holds each, with the same counts.

The CPU time of each worker process and of the whole machine (/proc) is recorded so the result
can say what limits it: on a machine with few cores, more workers share the same cores.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from model.train.progress import step
from model.types import EVENT_TYPES
from stream.devtools.procs import (
    broker_with_pid,
    cpu_seconds,
    get_json_status,
    machine_busy_seconds,
    start_worker,
    stop_worker,
    wait_healthy,
)
from stream.devtools.replay import load_payloads, preload
from stream.errors import InfraError, PoisonMessage, UsageError
from stream.kafka.admin import ensure_topics
from stream.kafka.broker import free_port
from stream.schemas import decode_event
from stream.settings import Settings
from stream.state.features import UserState

Counts = tuple[int, ...]  # lifetime count per event type, in EVENT_TYPES order
Log = Callable[[str], None]


def offline_counts(payloads: list[tuple[bytes, bytes]], max_bytes: int
                   ) -> tuple[dict[str, Counts], int]:
    """Per-user lifetime counts a correct worker must end with, and how many records are bad.

    The same decoding as the worker (stream.schemas.decode_event); duplicates counted once.
    """
    index = {t: i for i, t in enumerate(EVENT_TYPES)}
    counts: dict[str, list[int]] = {}
    seen: set[str] = set()
    bad = 0
    for key, value in payloads:
        try:
            ev = decode_event(value, key, max_bytes, True)  # as the worker
        except PoisonMessage:
            bad += 1
            continue
        if ev.event_id in seen:
            continue
        seen.add(ev.event_id)
        row = counts.get(ev.user_id)
        if row is None:
            row = counts[ev.user_id] = [0] * len(EVENT_TYPES)
        row[index[ev.type]] += 1
    return {u: tuple(c) for u, c in counts.items()}, bad


def table_counts(settings: Settings, topic: str, partitions: int, idle_s: float = 2.0,
                 timeout: float = 120.0) -> dict[str, Counts]:
    """Per-user counts from the latest value of every key on the table's changelog topic."""
    n_windows = len(settings.windows_s)
    consumer = KafkaConsumer(**settings.kafka_python_config(), enable_auto_commit=False,
                             auto_offset_reset="earliest", max_poll_records=5000)
    latest: dict[bytes, bytes | None] = {}
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        last_record = time.monotonic()
        # the workers have flushed (they ack inputs only after the changelog is acked), so
        # the topic is complete: read until it stays quiet
        while time.monotonic() - last_record < idle_s and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for r in records:
                    if r.key is not None:
                        latest[r.key] = r.value
                last_record = time.monotonic()
    finally:
        consumer.close()
    out: dict[str, Counts] = {}
    for key, value in latest.items():
        if value:  # a tombstone (expired user) deletes the key
            out[key.decode()] = tuple(UserState.from_bytes(value, n_windows).counts)
    return out


@dataclass
class _Proc:
    proc: subprocess.Popen[bytes]
    base: str
    log: Path


@contextmanager
def _workers(s: Settings, n: int, tmp: Path, log: Log) -> Iterator[list[_Proc]]:
    procs: list[_Proc] = []
    try:
        for i in range(n):
            port = free_port()
            ws = s.model_copy(update={"web_port": port})
            path = tmp / f"worker-{i}.log"
            p = start_worker(ws, tmp / f"state-{i}", path, extra_env={
                "LAMSTREAM_STORE": "rocksdb", "LAMSTREAM_MODEL_NAME": "baseline",
                # the load phase pauses the workers for a few seconds: not a failure
                "LAMSTREAM_SESSION_TIMEOUT_S": "60"})
            procs.append(_Proc(p, f"http://127.0.0.1:{port}", path))
        for w in procs:
            wait_healthy(w.base, w.proc, 180, w.log)
        yield procs
    finally:
        for w in procs:
            if w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.proc.pid, signal.SIGCONT)
            stop_worker(w.proc)


def _assignments(procs: list[_Proc], topic: str) -> list[set[int]] | None:
    """The events partitions each worker owns, or None while any worker is not settled."""
    out = []
    for w in procs:
        code, body = get_json_status(f"{w.base}/health")
        if code != 200 or body.get("status") != "ok":
            return None
        out.append({int(a.rsplit(":", 1)[1]) for a in body["assignment"]
                    if a.rsplit(":", 1)[0] == topic})
    return out


def _wait_settled(procs: list[_Proc], topic: str, partitions: int, timeout: float
                  ) -> list[set[int]]:
    deadline = time.monotonic() + timeout
    last: list[set[int]] | None = None
    while time.monotonic() < deadline:
        for w in procs:
            if w.proc.poll() is not None:
                raise InfraError(f"worker exited with {w.proc.returncode}: "
                                 f"{w.log.read_text()[-1500:]}")
        parts = _assignments(procs, topic)
        if parts is not None and all(parts):
            owned = [p for ps in parts for p in ps]
            if len(owned) == len(set(owned)) == partitions:
                return parts
        last = parts
        time.sleep(0.5)
    raise InfraError(f"{len(procs)} workers did not share the {partitions} partitions of "
                     f"{topic} within {timeout:.0f}s (last: {last})")


def _signal_all(procs: list[_Proc], sig: signal.Signals) -> None:
    for w in procs:
        os.kill(w.proc.pid, sig)


@dataclass(frozen=True)
class _Cpu:
    """CPU seconds so far of each worker, of the broker and of the whole machine."""

    workers: list[float | None]
    broker: float | None
    machine: float | None
    at: float  # time.monotonic()

    @classmethod
    def now(cls, procs: list[_Proc], broker_pid: int | None) -> _Cpu:
        return cls([cpu_seconds(w.proc.pid) for w in procs],
                   cpu_seconds(broker_pid) if broker_pid else None,
                   machine_busy_seconds(), time.monotonic())


def _cores_busy(c0: _Cpu, c1: _Cpu, processed: int) -> dict[str, Any]:
    """CPU seconds per wall second from resume to done: the cores the workers kept busy, and
    the cores the whole machine kept busy (broker, harness, anything else too)."""
    wall = c1.at - c0.at
    worker_cpu = [b - a for a, b in zip(c0.workers, c1.workers, strict=True)
                  if a is not None and b is not None]

    def busy(a: float | None, b: float | None) -> float | None:
        return round((b - a) / wall, 2) if a is not None and b is not None else None

    return {
        "cpu_s_per_worker": [round(c, 2) for c in worker_cpu],
        "worker_cores_busy": round(sum(worker_cpu) / wall, 2) if worker_cpu else None,
        "broker_cores_busy": busy(c0.broker, c1.broker),
        "machine_cores_busy": busy(c0.machine, c1.machine),
        # load-independent: what one CPU-second of worker time processes
        "events_per_worker_cpu_s": (round(processed / sum(worker_cpu), 1)
                                    if worker_cpu and sum(worker_cpu) > 0 else None),
    }


def _load_paused(s: Settings, procs: list[_Proc], topic: str,
                 payloads: list[tuple[bytes, bytes]], broker_pid: int | None
                 ) -> tuple[float, _Cpu]:
    """Load the events while the workers are stopped (SIGSTOP), then resume them; returns
    the load time and the CPU times at the resume."""
    _signal_all(procs, signal.SIGSTOP)
    try:
        t_load = time.monotonic()
        preload(s, topic, payloads)
        load_s = time.monotonic() - t_load
    finally:
        cpu0 = _Cpu.now(procs, broker_pid)
        _signal_all(procs, signal.SIGCONT)
    return load_s, cpu0


def _drain(procs: list[_Proc], n: int, timeout: float) -> list[dict[str, Any]]:
    """Every worker's /api/stats once they have processed `n` events together."""
    deadline = time.monotonic() + timeout
    stats: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        stats = [get_json_status(f"{w.base}/api/stats")[1] or {} for w in procs]
        if sum(st.get("events", 0) for st in stats) >= n:
            break
        time.sleep(0.1)
    processed = sum(st.get("events", 0) for st in stats)
    if processed < n:
        raise InfraError(f"{len(procs)} workers processed {processed:,} of {n:,} events in "
                         f"{timeout:.0f}s")
    return stats


def run_one(base: Settings, n_workers: int, payloads: list[tuple[bytes, bytes]],
            want: dict[str, Counts], run_id: str, tmp: Path, log: Log,
            broker_pid: int | None = None, timeout: float = 900.0
            ) -> tuple[dict[str, Any], dict[str, Counts]]:
    """One configuration: N workers drain the same stream; returns the row and table counts."""
    prefix = f"scale-{run_id}-w{n_workers}."
    s = base.model_copy(update={"topic_prefix": prefix, "app_id": f"scale-{run_id}-w{n_workers}",
                                "store": "rocksdb", "data_dir": tmp / f"w{n_workers}"})
    ensure_topics(s)
    events_topic = prefix + "events"
    changelog = f"{s.app_id}-{prefix}features-changelog"
    run_dir = tmp / f"w{n_workers}"
    run_dir.mkdir(parents=True, exist_ok=True)
    with _workers(s, n_workers, run_dir, log) as procs:
        parts = _wait_settled(procs, events_topic, s.partitions, 180)
        log(f"  {n_workers} worker(s) settled, events partitions "
            f"{[sorted(p) for p in parts]}; loading {len(payloads):,} events while paused")
        load_s, cpu0 = _load_paused(s, procs, events_topic, payloads, broker_pid)
        stats = _drain(procs, len(payloads), timeout)
        cpu1 = _Cpu.now(procs, broker_pid)
        firsts = [st["first_batch_at"] for st in stats if st.get("first_batch_at")]
        lasts = [st["last_batch_at"] for st in stats if st.get("last_batch_at")]
        span = max(lasts) - min(firsts)
        settled_after = _assignments(procs, events_topic)
        served = _served_counts_ok(procs, want)
        if changelog not in _assigned_topics(procs):
            raise InfraError(f"the workers do not own the table changelog {changelog}")
        table = table_counts(s, changelog, s.partitions)
    processed = sum(st.get("events", 0) for st in stats)
    row: dict[str, Any] = {
        "workers": n_workers,
        "eps": round(processed / span, 1) if span > 0 else None,
        "counts_match": False,  # decided by the caller against offline and the first run
        "events": processed,
        "busy_s": round(span, 2),
        "events_per_worker": [st.get("events", 0) for st in stats],
        "partitions_per_worker": [len(p) for p in parts],
        "rebalanced_during_run": settled_after != parts,
        "served_sample_ok": served,
        "users_in_table": len(table),
        "load_s": round(load_s, 2),
        **_cores_busy(cpu0, cpu1, processed),
    }
    return row, table


def _assigned_topics(procs: list[_Proc]) -> set[str]:
    topics: set[str] = set()
    for w in procs:
        code, body = get_json_status(f"{w.base}/health")
        if code == 200:
            topics.update(a.rsplit(":", 1)[0] for a in body["assignment"])
    return topics


def _served_counts_ok(procs: list[_Proc], want: dict[str, Counts], sample: int = 100) -> bool:
    """GET /features/{user}?local=1 (its own partitions only) on every worker for a spread
    of users: one owner, exact counts."""
    users = sorted(want)
    step = max(1, len(users) // sample)
    for user in users[::step][:sample]:
        bodies = []
        for w in procs:
            code, body = get_json_status(
                f"{w.base}/features/{urllib.parse.quote(user, safe='')}?local=1")
            if code == 200:
                bodies.append(body)
        if len(bodies) != 1:
            return False
        got = tuple(bodies[0]["counts"].get(t, 0) for t in EVENT_TYPES)
        if got != want[user]:
            return False
    return True


def explain(runs: list[dict[str, Any]], cpu_count: int) -> str:
    """What the figures show and what limits them, from the measured CPU use of each run."""
    if not runs or any(r["eps"] is None for r in runs):
        return "no measurement"
    text = "; ".join(f"{r['workers']} worker(s) {r['eps']:,.0f} ev/s" for r in runs) + "."
    gain = max(r["eps"] for r in runs) / runs[0]["eps"]
    busy = [r["machine_cores_busy"] for r in runs if r["machine_cores_busy"] is not None]
    saturated = bool(busy) and min(busy) >= 0.9 * cpu_count
    if saturated:
        got = ", ".join(f"{r['worker_cores_busy']}" for r in runs)
        brk = ", ".join(f"{r['broker_cores_busy']}" for r in runs)
        eff = ", ".join(f"{r['events_per_worker_cpu_s']:,.0f}" for r in runs
                        if r["events_per_worker_cpu_s"])
        text += (f" Ceiling: this machine has {cpu_count} CPU cores and they were saturated in "
                 f"every run ({min(busy):.2f}-{max(busy):.2f} cores busy); the workers got "
                 f"{got} cores, the broker {brk}, and other processes the rest. Each worker "
                 "is one Python process (one core at most), so throughput follows the CPU the "
                 f"workers could get, not their number: {eff} events per worker CPU-second.")
    elif gain >= 1.3:
        text += (f" Throughput grows with workers (x{gain:.2f} at best): the partitions are "
                 "processed in parallel processes.")
    else:
        text += (f" Throughput does not grow with workers: this machine has {cpu_count} CPU "
                 "cores for the broker and every worker together, and each worker is one "
                 "Python process (one core at most).")
    return text


def parse_workers(spec: str) -> list[int]:
    try:
        values = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--workers takes a comma-separated list of counts, got {spec!r}"
                         ) from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"--workers needs counts >= 1, got {spec!r}")
    return values


def run_scale_bench(settings: Settings, *, workers: list[int], n_events: int,
                    data: str | None, log: Log) -> dict[str, Any]:
    if max(workers) > settings.partitions:
        raise UsageError(f"{max(workers)} workers need at least as many partitions "
                         f"(LAMSTREAM_PARTITIONS={settings.partitions})")
    tmp = Path(tempfile.mkdtemp(prefix="lamstream-scale-"))
    payloads = load_payloads(data, n_events)
    want, bad = offline_counts(payloads, settings.max_event_bytes)
    run_id = uuid.uuid4().hex[:6]
    cpu_count = os.cpu_count() or 1
    log(f"bench scale: {len(payloads):,} events ({bad} invalid), {len(want):,} users, "
        f"{settings.partitions} partitions, {cpu_count} CPU core(s); state in {tmp}")
    runs: list[dict[str, Any]] = []
    first_table: dict[str, Counts] | None = None
    with broker_with_pid(settings, port=free_port(), log=log) as (s, broker_pid):
        for i, n in enumerate(workers):
            step(log, i, len(workers), f"{n} worker(s) next")
            row, table = run_one(s, n, payloads, want, run_id, tmp, log, broker_pid)
            if first_table is None:
                first_table = table
            row["counts_match"] = bool(table == want and table == first_table
                                       and row["served_sample_ok"]
                                       and row["events"] == len(payloads))
            runs.append(row)
            step(log, i + 1, len(workers), f"{n} worker(s) done")
            log(f"  {n} worker(s): {row['eps']:,.0f} ev/s over {row['busy_s']} s, events per "
                f"worker {row['events_per_worker']}, counts match: {row['counts_match']}, "
                f"cores busy: workers {row['worker_cores_busy']}, broker "
                f"{row['broker_cores_busy']}, machine {row['machine_cores_busy']}")
    return {"runs": runs, "events": len(payloads), "invalid_events": bad, "users": len(want),
            "partitions": settings.partitions, "cpu_count": cpu_count,
            "broker": "embedded tansu" if settings.embedded else settings.bootstrap,
            "explanation": explain(runs, cpu_count)}
