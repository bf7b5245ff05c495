"""Topic names, partition counts and record types, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from stream.schemas import (
    Decision,
    DlqRecord,
    Event,
    Feedback,
    ModelUpdate,
    Recommendation,
    Record,
    RiskAlert,
    RiskFeedback,
    RiskLabel,
)
from stream.settings import Settings


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    record: type[Record]
    partitions: int
    compacted: bool = False
    doc: str = ""


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic lamstream reads or writes. All records are orjson JSON keyed by user id."""

    events: TopicSpec
    dlq: TopicSpec
    recommendations: TopicSpec
    risk_alerts: TopicSpec
    feedback: TopicSpec
    model_updates: TopicSpec
    risk_labels: TopicSpec
    decisions: TopicSpec
    risk_feedback: TopicSpec

    def all(self) -> list[TopicSpec]:
        return [self.events, self.dlq, self.recommendations, self.risk_alerts, self.feedback,
                self.model_updates, self.risk_labels, self.decisions, self.risk_feedback]

    def by_name(self, name: str) -> TopicSpec:
        for spec in self.all():
            if spec.name == name:
                return spec
        raise KeyError(name)


def topics_for(settings: Settings) -> Topics:
    p = settings.topic_prefix
    n = settings.partitions
    return Topics(
        events=TopicSpec(f"{p}events", Event, n, doc="user events in (key: user_id)"),
        dlq=TopicSpec(f"{p}events.dlq", DlqRecord, n,
                      doc="malformed events with their original bytes"),
        recommendations=TopicSpec(f"{p}recommendations", Recommendation, n,
                                  doc="next items per triggering event"),
        risk_alerts=TopicSpec(f"{p}risk-alerts", RiskAlert, n,
                              doc="risk scores at or above the threshold, with reasons"),
        feedback=TopicSpec(f"{p}feedback", Feedback, n,
                           doc="joined decision outcomes for training"),
        model_updates=TopicSpec(f"{p}model-updates", ModelUpdate, 1,
                                doc="model versions published / rolled back"),
        risk_labels=TopicSpec(f"{p}risk-labels", RiskLabel, n,
                              doc="ground-truth fraud/legit labels (key: user_id)"),
        decisions=TopicSpec(f"{p}decisions", Decision, n,
                            doc="decision log: shown items, pool, propensities, point-in-time "
                            "features (internal, key: user_id)"),
        risk_feedback=TopicSpec(f"{p}risk-feedback", RiskFeedback, n,
                                doc="scored events joined with their risk labels, for "
                                "training (key: user pseudonym)"),
    )


def consumer_groups(settings: Settings) -> dict[str, tuple[str, tuple[str, ...]]]:
    """{process: (its consumer group, the topics it reads in that group)}: the worker, the
    feedback join (both joins) and the trainer. Their probes report lag on these topics."""
    t = topics_for(settings)
    return {
        "worker": (settings.app_id, (t.events.name,)),
        "feedback": (f"{settings.app_id}-feedback", (t.decisions.name, t.events.name,
                                                     t.risk_alerts.name, t.risk_labels.name)),
        "trainer": (f"{settings.app_id}-trainer", (t.feedback.name, t.risk_feedback.name)),
    }


def table_changelog(settings: Settings, table: str) -> str:
    """Faust's changelog topic name for one of our tables."""
    return f"{settings.app_id}-{settings.topic_prefix}{table}-changelog"


def full_topic_name(settings: Settings, name: str) -> str:
    """The topic a short name means (events, feedback, ...: TOPIC_PREFIX added); any other
    name as it is."""
    full = settings.topic_prefix + name
    return full if any(spec.name == full for spec in topics_for(settings).all()) else name
