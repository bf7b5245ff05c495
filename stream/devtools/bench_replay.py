"""`lamstream bench replay`: a live worker replays a real file in time order; its hit rate.

One worker (its default predictor: a trained recommender in the registry of
LAMSTREAM_DATA_DIR when there is one, else the online co-visitation baseline) consumes the
first `--events` events of the file, sorted by event time and keyed by user, from a fresh
events topic. Every recommendation it publishes (top_k = `--k`) is scored against the
user's next item that differs from the trigger's, and so is the strongest simple rule run
offline over the same events in the same order (model.train.live: the user's history
first, then co-visitation), on the same cases.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from model.datasets import iter_events
from model.train.live import history_then_covisitation, hit_rate, next_different_targets
from stream.client import tail
from stream.devtools.procs import (
    broker_with_pid,
    get_json,
    link_models,
    start_worker,
    stop_worker,
    wait_healthy,
)
from stream.devtools.replay import default_data, preload
from stream.errors import UsageError
from stream.kafka.admin import ensure_topics
from stream.settings import Settings
from stream.topics import topics_for

__all__ = ["run_replay_bench"]

Log = Callable[[str], None]
IDLE_S = 30.0  # no new recommendation for this long: the worker has published all it will


def load_time_ordered(data: str | None, n: int) -> list[dict[str, Any]]:
    """The first `n` usable events of `data` (user, item, time and id), by event time
    (stable: ties keep file order)."""
    out: list[dict[str, Any]] = []
    for e in iter_events(data or str(default_data())):
        if not all(isinstance(e.get(f), str) for f in ("user_id", "item_id", "event_id")):
            continue
        if not isinstance(e.get("ts"), int):
            continue
        out.append(e)
        if len(out) >= n:
            break
    if not out:
        raise UsageError(f"no usable events in {data or default_data()}")
    return sorted(out, key=lambda e: e["ts"])


def collect(s: Settings, expected: int) -> dict[str, list[str]]:
    """event id -> recommended item ids, read from the start of the recommendations topic
    until `expected` arrived or none came for IDLE_S."""
    topic = topics_for(s).recommendations.name
    return {rec["event_id"]: [it["item_id"] for it in rec["items"]]
            for _, rec in tail(s, topic, from_beginning=True, max_records=expected,
                               timeout=IDLE_S)}


def recommend_on(settings: Settings, evs: list[dict[str, Any]]) -> tuple[str, ...]:
    """The configured event types recommended on, or, for a file that has none of them (a
    purchase or review log), every type it has."""
    types = {str(e.get("type", "view")) for e in evs}
    configured = tuple(str(t) for t in settings.recommend_on)
    return configured if types & set(configured) else tuple(sorted(types))


def _worker_env(settings: Settings, tmp: Path, k: int, on: tuple[str, ...]) -> dict[str, str]:
    """The worker serves what the configured registry holds: it is linked, not copied."""
    models = settings.data_dir / "models"
    if models.is_dir():
        link_models(models, tmp / "worker")
    return {"LAMSTREAM_TOP_K": str(k), "LAMSTREAM_RECOMMEND_ON": ",".join(on)}


def run_replay_bench(settings: Settings, *, data: str | None, events: int, k: int,
                     log: Log) -> dict[str, Any]:
    """Replay, collect, score the worker and the offline rule on the same cases."""
    if events < 100 or k < 1:
        raise UsageError("--events must be >= 100 and --k >= 1")
    evs = load_time_ordered(data, events)
    targets = next_different_targets(evs)
    on = recommend_on(settings, evs)
    rule = history_then_covisitation(evs, k, on)
    tmp = Path(tempfile.mkdtemp(prefix="lamstream-replay-"))
    run_id = uuid.uuid4().hex[:6]
    try:
        with broker_with_pid(settings, log=log) as (base, _):
            s = base.model_copy(update={"topic_prefix": f"replay-{run_id}.",
                                        "app_id": f"replay-{run_id}"})
            ensure_topics(s)
            proc = start_worker(s, tmp / "worker", tmp / "worker.log", _worker_env(s, tmp, k, on))
            try:
                wait_healthy(f"http://127.0.0.1:{s.web_port}", proc, 180, tmp / "worker.log")
                health = get_json(f"http://127.0.0.1:{s.web_port}/health")
                log(f"replay: {len(evs):,} events to a worker serving {health.get('model')} "
                    f"{health.get('model_version')}")
                t0 = time.monotonic()
                preload(s, s.topic_prefix + "events",
                        [(e["user_id"].encode(), orjson.dumps(e)) for e in evs])
                live = collect(s, len(rule))
                seconds = time.monotonic() - t0
            finally:
                stop_worker(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cases = [i for i in rule if i in targets and i in live]
    hr_live, n = hit_rate(live, targets, k, cases)
    hr_rule, _ = hit_rate(rule, targets, k, cases)
    return {"data": str(data or default_data()), "events": len(evs), "k": k,
            "recommend_on": list(on),
            "served": f"{health.get('model')} {health.get('model_version')}",
            "recommendations": len(live), "expected_recommendations": len(rule),
            "cases": n, f"live_hr@{k}": round(hr_live, 4),
            f"history_then_covisitation_hr@{k}": round(hr_rule, 4),
            "live_vs_rule": round(hr_live / hr_rule, 3) if hr_rule else None,
            "seconds": round(seconds, 1)}
