"""The trainer's /health and /metrics: records in, gate decisions, serving versions, lag."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client.core import Metric

from stream import probes
from stream.probes import LagProbe, counter, gauge, lag_gauge
from stream.settings import Settings
from stream.topics import consumer_groups

__all__ = ["gate_outcome", "serve_probes", "trainer_families", "trainer_health"]

_P = "lamstream_trainer"
MODELS = (("reranker", "trainer", "gates"), ("risk", "risk", "risk_gates"),
          ("recommender", "sequence", "sequence_gates"))


def gate_outcome(entry: dict[str, Any]) -> str:
    """published, refused or undecided (a risk gate with too few labels of one class)."""
    if "published" in entry:
        return "published"
    return "undecided" if entry.get("gate", {}).get("decided") is False else "refused"


def _outcomes(gates: Sequence[dict[str, Any]]) -> Counter[str]:
    return Counter(gate_outcome(g) for g in gates)


def _stats(ct: Any, attr: str) -> dict[str, Any]:
    """A model trainer's stats() from the probe thread; the loop may be appending to the
    window it sums meanwhile (a deque raises then), so read again."""
    for _ in range(3):
        try:
            stats: dict[str, Any] = getattr(ct, attr).stats()
            return stats
        except RuntimeError:
            continue
    return {}


def trainer_health(ct: Any, lag: LagProbe, started: float) -> dict[str, Any]:
    """ct: stream.trainer.loop.ContinuousTrainer (read from the probe thread: plain counters
    and the last entries of append-only lists)."""
    models = {}
    for name, attr, gates_attr in MODELS:
        gates = list(getattr(ct, gates_attr))
        stats = _stats(ct, attr)
        models[name] = {"serving": stats.get("serving"), "seen": stats.get("seen"),
                        "trained": stats.get("trained"), "gates": dict(_outcomes(gates)),
                        "last_gate": gates[-1].get("gate") if gates else None}
    return {"status": "ok", "process": "trainer", "uptime_s": round(time.time() - started, 1),
            "models": models, "published": {"reranker": list(ct.published[-5:]),
                                            "risk": list(ct.risk_published[-5:]),
                                            "recommender": list(ct.sequence_published[-5:])},
            "lag": lag.report()}


def trainer_families(ct: Any, lag: LagProbe) -> Iterable[Metric]:
    stats = {name: _stats(ct, attr) for name, attr, _ in MODELS}
    yield counter(f"{_P}_records_in", "Records the trainer read, by model",
                  {(m,): float(s.get("seen") or 0) for m, s in stats.items()}, ("model",))
    yield counter(f"{_P}_records_trained", "Records the candidates trained on, by model",
                  {(m,): float(s.get("trained") or 0) for m, s in stats.items()}, ("model",))
    yield counter(f"{_P}_gate_decisions", "Gate checks, by model and outcome",
                  {(m, o): n for m, _, g in MODELS
                   for o, n in _outcomes(list(getattr(ct, g))).items()}, ("model", "outcome"))
    yield gauge(f"{_P}_serving_version_info", "The version each model is compared against "
                "(what serves)", {(m, str(s.get("serving"))): 1 for m, s in stats.items()},
                ("model", "version"))
    seq = stats["recommender"]  # the hybrid's events loop (stream.trainer.sequence)
    yield counter(f"{_P}_sequence_polls", "Event polls the hybrid was scored on, then "
                  "fine-tuned on", {(): float(seq.get("polls") or 0)})
    yield counter(f"{_P}_sequence_events_skipped", "Events not learned from (no hybrid "
                  "served, or not a valid event)", {(): float(seq.get("skipped") or 0)})
    yield gauge(f"{_P}_sequence_prequential_hr20", "HR@20 on the last poll before training "
                "on it, of the candidate and of the serving hybrid",
                {(side,): float(seq[f"last_{side}_hr"]) for side in ("candidate", "serving")
                 if seq.get(f"last_{side}_hr") is not None}, ("side",))
    yield lag_gauge(_P, lag)


def serve_probes(ct: Any, settings: Settings) -> contextlib.AbstractContextManager[None]:
    """/health and /metrics on WEB_HOST:TRAINER_WEB_PORT while the trainer runs; the lag is
    of the group `<app_id>-trainer` on feedback and risk-feedback."""
    group, topics = consumer_groups(settings)["trainer"]
    return probes.serve_probes(
        "trainer", settings, settings.trainer_web_port, group, topics,
        lambda lag, started: trainer_health(ct, lag, started),
        lambda lag: trainer_families(ct, lag))
