"""The feedback join's /health and /metrics: records, reward per policy, pending, lag."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from prometheus_client.core import Metric

from stream import probes
from stream.kafka.faust_patches import recovery_done
from stream.probes import LagProbe, counter, gauge, lag_gauge
from stream.settings import Settings
from stream.topics import consumer_groups

__all__ = ["feedback_families", "feedback_health", "serve_probes"]

_P = "lamstream_feedback"


def _ready(app: Any) -> bool:
    return recovery_done(app) and not app.should_stop


def feedback_health(fw: Any, lag: LagProbe, started: float) -> dict[str, Any]:
    """The join's state and counters since start (fw: stream.feedback.app.FeedbackWorker).

    `pending` is decisions taken in minus feedback emitted since this process started: the
    recommendations whose reward window is still open (a restart restores them from the
    table but counts from zero)."""
    s = fw.join.stats
    policies = {p: {"feedback": n, "rewarded": r, "reward_rate": round(r / n, 4) if n else None}
                for p, (n, r) in sorted(s.policies.items())}
    return {
        "status": "ok" if _ready(fw.app) else "starting", "process": "feedback",
        "rebalancing": bool(getattr(fw.app, "rebalancing", False)),
        "uptime_s": round(time.time() - started, 1),
        "rewards": {k: v for k, v in asdict(s).items() if k != "policies"},
        "pending": max(0, s.decisions - s.feedback - s.suppressed),
        "policies": policies, "risk_labels": asdict(fw.risk.stats), "lag": lag.report(),
    }


def feedback_families(fw: Any, lag: LagProbe) -> Iterable[Metric]:
    s, r = fw.join.stats, fw.risk.stats
    yield counter(f"{_P}_records_in", "Decision and event records the reward join took in",
                  {("decision",): s.decisions, ("duplicate",): s.duplicates,
                   ("too_late",): s.too_late, ("engagement",): s.engagements,
                   ("malformed",): s.malformed}, ("kind",))
    yield counter(f"{_P}_records_out", "Records the joins published",
                  {("feedback",): s.feedback, ("risk-feedback",): r.joined}, ("topic",))
    yield counter(f"{_P}_rewards_joined", "Feedback records with a positive reward, by policy",
                  {(p,): v[1] for p, v in s.policies.items()}, ("policy",))
    yield counter(f"{_P}_feedback", "Feedback records, by policy",
                  {(p,): v[0] for p, v in s.policies.items()}, ("policy",))
    yield gauge(f"{_P}_reward_rate", "Rewarded share of the feedback since start, by policy",
                {(p,): v[1] / v[0] for p, v in s.policies.items() if v[0]}, ("policy",))
    yield gauge(f"{_P}_pending", "Decisions whose reward window is still open",
                {(): max(0, s.decisions - s.feedback - s.suppressed)})
    yield counter(f"{_P}_risk_labels", "Risk labels in, and those joined to a scored event",
                  {("label",): r.labels, ("joined",): r.joined, ("unmatched",): r.unmatched,
                   ("dlq",): r.dlq}, ("outcome",))
    yield lag_gauge(_P, lag)


def serve_probes(fw: Any, settings: Settings) -> contextlib.AbstractContextManager[None]:
    """/health and /metrics on WEB_HOST:FEEDBACK_WEB_PORT while the join runs; the lag is of
    the group `<app_id>-feedback` on the topics both joins read."""
    group, topics = consumer_groups(settings)["feedback"]
    return probes.serve_probes(
        "feedback", settings, settings.feedback_web_port, group, topics,
        lambda lag, started: feedback_health(fw, lag, started),
        lambda lag: feedback_families(fw, lag))
