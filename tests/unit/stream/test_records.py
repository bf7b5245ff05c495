"""Every record builder of stream.records writes exactly the fields of its schema, with values
the schema reads back unchanged."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from model.types import (
    PolicyTrace,
    Prediction,
    PredictionContext,
    Reason,
    RiskOutput,
    ScoredItem,
    SeqItem,
)
from stream.errors import PoisonMessage
from stream.records import (
    alert_record,
    decision_record,
    dlq_record,
    feedback_record,
    read_decision,
    recommendation_record,
    risk_feedback_record,
)
from stream.schemas import (
    Decision,
    DlqRecord,
    Event,
    Feedback,
    Recommendation,
    Record,
    RiskAlert,
    RiskFeedback,
)
from stream.state.labels import Label, Match, Snapshot
from stream.state.rewards import Outcome

T0 = 1_764_000_000_000
EVENT = Event(event_id="e7", user_id="u1", type="view", item_id="i2", ts=T0, category="shoes")
CTX = PredictionContext("u1", "e7", "i2", "view", T0, "shoes",
                        (SeqItem("i1", "purchase", T0 - 60_000), SeqItem("i2", "view", T0)),
                        {"count_purchase_1m": 2.0, "events_total": 2.0})
ITEMS = (ScoredItem("i3", 0.9, 0.8), ScoredItem("i4", 0.5, 0.2))
RISK = RiskOutput(0.91, (Reason("count_purchase_1m", 2.0, 0.7),))
TRACE = PolicyTrace("epsilon(0.1)", True, ITEMS + (ScoredItem("i5", 0.1, 1.0),),
                    (0.8, 0.2, 0.1), shadow_policy="greedy", shadow_items=("i3", "i5"),
                    shadow_inclusion=(1.0, 0.0, 1.0), base_scores=(0.7, 0.6, 0.1),
                    candidate_categories=("shoes", None, "hats"),
                    recent_categories=("hats", "shoes"))


def prediction(trace: PolicyTrace | None) -> Prediction:
    return Prediction(ITEMS, RISK, "fake", "fake-v1", "risk-v3", trace)


def conforms(record: dict[str, Any], model: type[Record], *, every_field: bool = True) -> None:
    """The schema reads the record, the record has no field the schema lacks (extra fields
    would pass validation unseen), and each value comes back as it was written."""
    parsed = model.model_validate_json(orjson.dumps(record))
    fields = set(model.model_fields)
    assert set(record) <= fields
    if every_field:
        assert set(record) == fields
    assert {n for n, f in model.model_fields.items() if f.is_required()} <= set(record)
    back = orjson.loads(parsed.model_dump_json())
    assert {k: back[k] for k in record} == orjson.loads(orjson.dumps(record))


@pytest.mark.parametrize("trace", [None, TRACE])
def test_recommendation(trace: PolicyTrace | None) -> None:
    rec = recommendation_record(EVENT, prediction(trace), 12.34567, T0 + 5)
    conforms(rec, Recommendation)
    assert (rec["rec_id"], rec["latency_ms"], rec["explored"]) == (
        "rec:e7", 12.346, trace is not None)
    assert rec["items"][0] == {"item_id": "i3", "score": 0.9, "propensity": 0.8}


def test_alert_carries_the_snapshot_the_risk_model_scored() -> None:
    alert = alert_record(EVENT, prediction(None), CTX, 0.8, 3.0, T0 + 5)
    conforms(alert, RiskAlert)
    assert (alert["alert_id"], alert["score"], alert["threshold"]) == ("alert:e7", 0.91, 0.8)
    assert alert["features"] == CTX.features
    assert orjson.loads(orjson.dumps(alert["sequence"])) == [["i1", "purchase", T0 - 60_000],
                                                            ["i2", "view", T0]]


@pytest.mark.parametrize("trace", [None, TRACE])
def test_decision(trace: PolicyTrace | None) -> None:
    pred = prediction(trace)
    rec = recommendation_record(EVENT, pred, 1.0, T0 + 5)
    raw = decision_record(rec, CTX, pred, 0.8)
    d = read_decision(orjson.loads(raw))
    conforms(d, Decision, every_field=trace is not None)
    assert d["items"] == rec["items"]
    assert (d["risk_score"], d["risk_model_version"], d["risk_threshold"]) == (
        0.91, "risk-v3", 0.8)
    if trace is None:
        assert d["policy"] == "greedy" and d["candidates"] == rec["items"]
    else:
        assert [c["propensity"] for c in d["candidates"]] == [0.8, 0.2, 0.1]


def test_feedback_has_the_decisions_snapshot_and_no_user_id() -> None:
    pred = prediction(TRACE)
    decision = read_decision(orjson.loads(decision_record(
        recommendation_record(EVENT, pred, 1.0, T0), CTX, pred, 0.8)))
    fb = feedback_record(Outcome(decision, 2.0, "i4", "add_to_cart", T0 + 60_000),
                         "k" * 32, "kid", T0 + 99)
    conforms(fb, Feedback)
    assert (fb["reward"], fb["engaged_item"], fb["decision_ts"]) == (2.0, "i4", T0)
    assert "u1" not in orjson.dumps(fb).decode()


def test_risk_feedback() -> None:
    snap = Snapshot("e7", T0, 0.91, "risk-v3", 0.8, {"x": 1.0}, [["i2", "view", T0]])
    fb = risk_feedback_record(Match(snap, Label("event", "e7", "fraud", "chargeback", T0 + 1)),
                              "k" * 32, "kid", T0 + 2)
    conforms(fb, RiskFeedback)
    assert (fb["alerted"], fb["label_scope"], fb["label_ts"]) == (True, "event", T0 + 1)


@pytest.mark.parametrize("key", [b"u1", None])
def test_dlq_keeps_the_original_bytes(key: bytes | None) -> None:
    raw = b"\x00\xffnot json"
    rec = orjson.loads(dlq_record(PoisonMessage("not_json", "value is not JSON"), raw, key,
                                  "events", 3, 42, T0))
    conforms(rec, DlqRecord)
    dlq = DlqRecord.model_validate(rec)
    assert dlq.raw_bytes() == raw and dlq.error_kind == "not_json"
    assert (dlq.topic, dlq.partition, dlq.offset, dlq.received_at) == ("events", 3, 42, T0)
