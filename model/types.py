"""The model's input and output contract: plain dataclasses shared with the stream side."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, get_args

__all__ = [
    "EVENT_TYPES", "EVENT_TYPE_INDEX", "EventType", "FEATURE_NAMES", "PolicyTrace", "Prediction",
    "PredictionContext", "RERANKER", "RERANK_SEQ_WINDOW", "Reason", "RerankInput", "RiskOutput",
    "ScoredItem", "SeqItem",
]

# The one definition of the event types: stream.schemas validates records against it, stream
# settings check their per-type options against it, features count one column per type.
EventType = Literal["view", "click", "add_to_cart", "purchase"]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
EVENT_TYPE_INDEX: dict[str, int] = {t: i for i, t in enumerate(EVENT_TYPES)}

# Numeric features the stream side provides in PredictionContext.features (all floats).
# Window labels are 1m / 1h / 24h with the default windows; other windows add other labels,
# so models look features up by name and default missing ones to 0.
FEATURE_NAMES: tuple[str, ...] = (
    "events_total",
    "count_view", "count_click", "count_add_to_cart", "count_purchase",
    "count_view_1m", "count_click_1m", "count_add_to_cart_1m", "count_purchase_1m",
    "count_view_1h", "count_click_1h", "count_add_to_cart_1h", "count_purchase_1h",
    "count_view_24h", "count_click_24h", "count_add_to_cart_24h", "count_purchase_24h",
    "spend_1h", "spend_24h", "purchase_rate_1h", "purchase_rate_24h",
    "session_length", "session_duration_s",
    "distinct_items", "distinct_categories",
    "distinct_devices_24h", "distinct_ips_24h",
    "gap_s", "cart_to_view_1h", "purchase_to_view_1h",
    "price", "new_device", "new_ip",
)


# Small immutable records are NamedTuples: the worker builds millions of them per minute, and a
# frozen dataclass costs several times more to construct.
class SeqItem(NamedTuple):
    """One past event of the user: item, event type and event time (epoch ms)."""

    item_id: str
    event_type: str
    ts_ms: int


@dataclass(slots=True)
class PredictionContext:
    """Everything a model may use to decide for one event, frozen at decision time."""

    user_id: str
    event_id: str
    item_id: str
    event_type: str
    ts_ms: int
    category: str | None
    # Oldest first; the triggering event is the last element.
    sequence: tuple[SeqItem, ...]
    features: dict[str, float]
    recommend: bool = True
    k: int = 10
    exclude_items: frozenset[str] = field(default_factory=frozenset)
    # The user's cached sequence-model state after the event before this one (the bytes a
    # previous Prediction.seq_state carried), b"" to start keeping one; None (the default):
    # the model re-encodes `sequence` and returns no state. A state of another model version
    # is re-encoded from `sequence` (model.recommenders.hybrid.HybridRecommender.advance).
    seq_state: bytes | None = None


class ScoredItem(NamedTuple):
    item_id: str
    score: float
    propensity: float = 1.0


class Reason(NamedTuple):
    feature: str
    value: float
    contribution: float


@dataclass(slots=True)
class RiskOutput:
    score: float  # calibrated probability in [0, 1]
    reasons: tuple[Reason, ...]


@dataclass(slots=True)
class PolicyTrace:
    """How an exploration policy chose the shown items (model.policy.exploration), for the log.

    `candidates` is the ranked pool the policy chose from, each with the logging policy's
    inclusion probability as `propensity`; the shadow fields say what a candidate policy
    would have shown and its inclusion probability for every pool item (same order).
    They are kept as the pool as ranked (`pool`, whose own propensities mean nothing) and
    the `inclusion` of each: a trace is built for every decision and the decision log zips
    the two itself, so the merged tuples are made only when something asks for them.
    """

    policy: str
    explored: bool
    pool: tuple[ScoredItem, ...]
    inclusion: tuple[float, ...]
    shadow_policy: str | None = None
    shadow_items: tuple[str, ...] = ()
    shadow_inclusion: tuple[float, ...] = ()
    # the base recommender's score of each candidate when a reranker reordered the pool
    # (`candidates` then carry the reranker's scores): what the trainer learns from
    base_scores: tuple[float, ...] = ()
    # each candidate's category and that of the user's last few items (oldest first, the
    # trigger last), as the worker's catalogue knew them (None: unknown); empty: not logged
    candidate_categories: tuple[str | None, ...] = ()
    recent_categories: tuple[str | None, ...] = ()

    @property
    def candidates(self) -> tuple[ScoredItem, ...]:
        """The pool, each candidate with its inclusion probability as `propensity`."""
        return tuple(ScoredItem(c[0], c[1], p)
                     for c, p in zip(self.pool, self.inclusion, strict=True))


@dataclass(slots=True)
class Prediction:
    items: tuple[ScoredItem, ...]  # empty when context.recommend is False
    risk: RiskOutput
    model: str
    model_version: str
    risk_model_version: str
    trace: PolicyTrace | None = None  # set by an exploring predictor
    # the user's sequence state after this event, when the context carried one and the served
    # model keeps one (else None): store it with the user, pass it with the next event
    seq_state: bytes | None = None


RERANKER = "reranker"  # the feedback-trained reranker: registry name, model-updates name
# Sequence entries (the trigger last) the reranker's features read, and whose categories the
# exploring predictor logs: one window for serving, logging and training
RERANK_SEQ_WINDOW = 10


@dataclass(frozen=True, slots=True)
class RerankInput:
    """One decision as the reranker sees it: the user's recent items (oldest first, the
    trigger last, as logged in a decision) and the base recommender's ranked pool."""

    sequence: Sequence[Sequence[object]]  # (item_id, event_type, ts) each
    candidates: Sequence[str]
    base_scores: Sequence[float]
    category: str | None = None  # the trigger's category, if the event had one
    # per candidate (same order) and for the user's last few items (oldest first): their
    # categories as the worker's catalogue knew them, None where unknown (model.policy.catalog)
    candidate_categories: Sequence[str | None] = ()
    recent_categories: Sequence[str | None] = ()
