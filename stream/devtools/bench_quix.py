"""`lamstream bench quix`: one lamstream worker against one Quix Streams process, same events.

Both drain the same real events, preloaded into fresh topics of one broker (the embedded one,
or LAMSTREAM_BOOTSTRAP_SERVERS), one after the other:
  (q) Quix Streams, installed as a user would in its own venv (default .venv-quix, created
      with `python3 -m venv` and `pip install quixstreams==QUIX_VERSION` when missing), runs
      stream.devtools.quix_peer: JSON in, a per-user count in its RocksDB state, one JSON
      record out per event, a fresh consumer group;
  (c) the lamstream worker, measured as `bench pipeline` measures it over a preloaded backlog
      (stream.devtools.bench_pipeline.drained_worker), serving what a worker serves by default.
Each rate is events over the busy span, the first event processed to the last: the peer
stamps every output with the time it processed the event, the worker reports its first and
last batch. The outputs are read back and must be exact: one per event from the peer, one
recommendation per view/click (LAMSTREAM_RECOMMEND_ON) of every valid event from the worker.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from model.types import EVENT_TYPES
from stream.client import tail
from stream.devtools.bench_pipeline import BenchRun, create, drained_worker, models_for
from stream.devtools.bench_scale import offline_counts
from stream.devtools.procs import broker_for
from stream.devtools.replay import load_payloads, preload
from stream.errors import InfraError
from stream.kafka.broker import free_port
from stream.settings import Settings

Log = Callable[[str], None]
QUIX_VERSION = "3.28.1"  # the newest on PyPI when the bench was written (2026-12)
DEFAULT_VENV = Path(".venv-quix")
PEER = Path(__file__).with_name("quix_peer.py")
# Quix derives its changelog topics' retention from the input topic's configs and fails
# (KeyError 'retention.ms') when the broker does not report one; tansu reports only the
# configs a topic was created with, so the bench sets Kafka's defaults explicitly
TOPIC_CONFIGS = {"retention.ms": "604800000", "retention.bytes": "-1"}
IDLE_S = 3.0  # an output topic read back is complete once it stays quiet this long


def venv_commands(venv: Path, version: str = QUIX_VERSION, python: str = "python3"
                  ) -> list[list[str]]:
    """The commands that make `venv` a Quix Streams `version` environment."""
    return [[python, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
             f"quixstreams=={version}"]]


def installed_version(python: Path) -> str | None:
    """The quixstreams version `python` imports, None when it has none (or no python)."""
    if not python.exists():
        return None
    proc = subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                           "print(m.version('quixstreams'))"], capture_output=True, text=True)
    return (proc.stdout.strip() or None) if proc.returncode == 0 else None


def ensure_venv(venv: Path, version: str, log: Log) -> Path:
    """The interpreter of `venv` with quixstreams `version`, installed first when missing."""
    python = venv / "bin" / "python"
    if installed_version(python) == version:
        return python
    log(f"bench quix: installing quixstreams=={version} into {venv} (its own venv: it is "
        "not a lamstream dependency)")
    for cmd in venv_commands(venv, version):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise InfraError(f"{' '.join(cmd)} failed: {proc.stderr[-1500:]}")
    return python


def peer_command(python: Path, bootstrap: str, source: str, sink: str, group: str,
                 state_dir: Path, n: int) -> list[str]:
    """The Quix peer as a subprocess of the venv's interpreter (quix_peer's usage line)."""
    return [str(python), str(PEER), bootstrap, source, sink, group, str(state_dir), str(n)]


def busy_rate(times: Iterable[float], n: int) -> float:
    """`n` events over the span from the first processing time to the last."""
    stamps = list(times)
    span = max(stamps) - min(stamps) if stamps else 0.0
    if span <= 0:
        raise InfraError(f"no busy span to measure {n} events over")
    return n / span


def exact(ids: Iterable[str], want: int) -> bool:
    """`want` outputs, each for a different event: none lost, none twice."""
    counts = Counter(ids)
    return len(counts) == want and set(counts.values()) <= {1}


def expected_recommendations(s: Settings, payloads: list[tuple[bytes, bytes]]) -> int:
    """Recommendations a correct worker publishes: one per valid, distinct event of a type
    in RECOMMEND_ON (the worker's own decoding, as bench scale counts)."""
    counts, _bad = offline_counts(payloads, s.max_event_bytes)
    kinds = [i for i, t in enumerate(EVENT_TYPES) if t in s.recommend_on]
    return sum(c[i] for c in counts.values() for i in kinds)


def read_back(s: Settings, topic: str) -> list[Any]:
    """Every record value of `topic`, read until it stays quiet for IDLE_S."""
    return [v for _, v in tail(s, topic, from_beginning=True, timeout=IDLE_S)]


def quix_phase(run: BenchRun, python: Path) -> dict[str, Any]:
    """(q) the Quix peer drains the preloaded events; its rate and whether its outputs are
    exact."""
    source, sink = f"bench-{run.run_id}-quix-in", f"bench-{run.run_id}-quix-out"
    create(run.base, [source, sink], TOPIC_CONFIGS)
    preload(run.base, source, run.payloads)
    n = len(run.payloads)
    cmd = peer_command(python, run.base.bootstrap, source, sink, f"bench-{run.run_id}-quix",
                       run.tmp / "quix-state", n)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise InfraError(f"the Quix peer exited with {proc.returncode}: {proc.stderr[-1500:]}")
    outputs = read_back(run.base, sink)
    eps = busy_rate((o["processed_at"] for o in outputs), n)
    ok = exact((o["event_id"] for o in outputs), n)
    run.log(f"(q) Quix Streams: {eps:,.0f} ev/s ({len(outputs)} outputs for {n} events, "
            f"exact: {ok})")
    return {"eps": eps, "outputs": len(outputs), "exact": ok}


def lamstream_phase(run: BenchRun) -> dict[str, Any]:
    """(c) the worker drains the same events; its rate, predictor and exactness."""
    with drained_worker(run) as w:
        want = expected_recommendations(w.settings, run.payloads)
        recs = read_back(w.settings, w.settings.topic_prefix + "recommendations")
    ok = exact((r["event_id"] for r in recs), want) and w.stats["recommendations"] == want
    return {"eps": w.eps, "outputs": len(recs), "expected": want, "exact": ok,
            "predictor": w.served}


def run_quix_bench(settings: Settings, *, n_events: int, data: str | None, log: Log,
                   venv: Path = DEFAULT_VENV, version: str = QUIX_VERSION) -> dict[str, Any]:
    """(q) then (c) on one broker (module doc); both figures, their ratio and the counts."""
    python = ensure_venv(venv, version, log)
    tmp = Path(tempfile.mkdtemp(prefix="lamstream-quix-"))
    payloads = load_payloads(data, n_events)
    models = models_for(settings, "auto", data, n_events, tmp, log)
    # a free port: the machine may run another embedded broker on the default one
    with broker_for(settings, port=free_port(), log=log) as s:
        run = BenchRun(s, payloads, uuid.uuid4().hex[:6], tmp, log, models)
        log(f"bench quix: {n_events} real events, {s.partitions} partitions, broker "
            f"{s.bootstrap}")
        quix = quix_phase(run, python)
        ls = lamstream_phase(run)
    return {"quix_eps": round(quix["eps"], 1), "lamstream_eps": round(ls["eps"], 1),
            "ratio_vs_quix": round(ls["eps"] / quix["eps"], 3), "events": n_events,
            "quix_outputs": quix["outputs"], "quix_exact": quix["exact"],
            "lamstream_recommendations": ls["outputs"],
            "lamstream_expected_recommendations": ls["expected"],
            "lamstream_exact": ls["exact"], "quixstreams": version,
            "predictor": ls["predictor"], "partitions": s.partitions,
            "lamstream_python": sys.version.split()[0],
            "broker": "embedded tansu" if settings.embedded else settings.bootstrap}
