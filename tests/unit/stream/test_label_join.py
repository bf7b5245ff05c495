"""The risk-label join's pure state: by event, by user in the window, either order, repeats."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from model.testing import FakePredictor
from model.types import PredictionContext, SeqItem
from stream.errors import PoisonMessage
from stream.records import decision_record, read_decision, risk_feedback_record
from stream.schemas import Decision, RiskAlert, RiskFeedback, decode_risk_label
from stream.state.labels import (
    Label,
    LabelConfig,
    Match,
    Snapshot,
    UserLabels,
    snapshot_from_alert,
    snapshot_from_decision,
)

MIN = 60_000
DAY = 86_400_000
CFG = LabelConfig(window_ms=7 * DAY, grace_ms=MIN, max_snapshots=5, max_labels=3)
T0 = 1_764_000_000_000


def snap(eid: str, ts: int, score: float = 0.1) -> Snapshot:
    return Snapshot(eid, ts, score, "risk-v1", 0.8, {"events_total": 3.0},
                    [["i1", "view", ts]])


def ev_label(eid: str, ts: int, label: str = "fraud", source: str = "chargeback") -> Label:
    return Label("event", eid, label, source, ts)


def user_label(ts: int, label: str = "fraud", source: str = "review") -> Label:
    return Label("user", None, label, source, ts)


def joined(matches: list[Match]) -> list[tuple[str, str, str]]:
    return [(m.snapshot.event_id, m.label.scope, m.label.label) for m in matches]


def test_event_label_joins_its_event_snapshot_only() -> None:
    st = UserLabels(0)
    for i in range(3):
        st.add_snapshot(snap(f"e{i}", T0 + i * MIN), CFG, T0)
    status, out = st.add_label(ev_label("e1", T0 + DAY), CFG, T0 + 2 * MIN)
    assert status == "joined" and joined(out) == [("e1", "event", "fraud")]
    assert out[0].snapshot.features == {"events_total": 3.0}  # as scored
    assert not st.labels  # found its event: nothing left waiting


def test_user_label_joins_every_snapshot_in_the_window_before_its_ts() -> None:
    st = UserLabels(0)
    for eid, ts in [("old", T0 - 8 * DAY), ("a", T0 - 6 * DAY), ("b", T0 - MIN),
                    ("after", T0 + MIN)]:
        st.add_snapshot(snap(eid, ts), CFG, 0)
    status, out = st.add_label(user_label(T0), CFG, T0 + MIN)
    assert status == "joined"
    assert sorted(m.snapshot.event_id for m in out) == ["a", "b"]
    # it keeps waiting (until ts + grace) for snapshots that arrive late but fall inside
    assert st.labels == [user_label(T0)]
    _, late = st.add_snapshot(snap("late", T0 - 2 * MIN), CFG, T0 + MIN)
    assert joined(late) == [("late", "user", "fraud")]
    _, outside = st.add_snapshot(snap("later", T0 + 30_000), CFG, T0 + MIN)
    assert outside == []


def test_label_before_snapshot_is_buffered_and_joined_when_it_arrives() -> None:
    st = UserLabels(0)
    status, out = st.add_label(ev_label("e9", T0 + MIN), CFG, T0 - 5 * MIN)
    assert (status, out) == ("waiting", [])
    status, out = st.add_snapshot(snap("e9", T0, score=0.95), CFG, T0 - MIN)
    assert status == "added" and joined(out) == [("e9", "event", "fraud")]
    assert out[0].snapshot.alerted
    assert not st.labels


def test_duplicates_yield_one_record() -> None:
    st = UserLabels(0)
    st.add_snapshot(snap("e1", T0), CFG, T0)
    assert st.add_label(ev_label("e1", T0 + MIN), CFG, T0)[0] == "joined"
    assert st.add_label(ev_label("e1", T0 + MIN), CFG, T0) == ("duplicate", [])
    # the same event again (its alert after its decision, a re-delivery): no new record
    assert st.add_snapshot(snap("e1", T0), CFG, T0) == ("duplicate", [])
    # a user label repeated, also after it stopped waiting
    assert len(st.add_label(user_label(T0 + MIN), CFG, T0)[1]) == 1
    assert st.add_label(user_label(T0 + MIN), CFG, T0) == ("duplicate", [])
    assert st.add_label(user_label(T0 + MIN), CFG, T0 + DAY) == ("duplicate", [])
    # a different label is a new fact: a relabel, another source, another ts
    assert len(st.add_label(ev_label("e1", T0 + MIN, label="legit"), CFG, T0)[1]) == 1
    assert len(st.add_label(ev_label("e1", T0 + MIN, source="manual"), CFG, T0)[1]) == 1
    assert len(st.add_label(ev_label("e1", T0 + 2 * MIN), CFG, T0)[1]) == 1
    # a buffered label delivered twice waits once and joins once
    st2 = UserLabels(0)
    st2.add_label(ev_label("e2", T0), CFG, 0)
    assert st2.add_label(ev_label("e2", T0), CFG, 0) == ("duplicate", [])
    assert len(st2.labels) == 1
    assert len(st2.add_snapshot(snap("e2", T0), CFG, 0)[1]) == 1


def test_ttl_in_event_time() -> None:
    st = UserLabels(0)
    st.add_snapshot(snap("e1", T0), CFG, T0)
    st.add_label(ev_label("never", T0 + MIN), CFG, T0)
    assert st.next_expiry(CFG) == T0 + 2 * MIN  # the waiting label's ts + grace
    assert st.expire(T0 + 2 * MIN, CFG) == []  # not yet past it
    assert st.expire(T0 + 2 * MIN + 1, CFG) == [ev_label("never", T0 + MIN)]  # unmatched
    assert st.next_expiry(CFG) == T0 + 7 * DAY
    st.expire(T0 + 7 * DAY, CFG)
    assert "e1" in st.snaps  # kept while the watermark is within the window
    st.expire(T0 + 7 * DAY + 1, CFG)
    assert st.empty() and st.next_expiry(CFG) is None
    # too late on arrival: a label finds nothing it can wait for, a snapshot is not kept
    assert st.add_label(ev_label("e1", T0), CFG, T0 + 8 * DAY) == ("unmatched", [])
    assert st.add_snapshot(snap("e1", T0), CFG, T0 + 8 * DAY) == ("too_late", [])
    assert st.empty()


def test_bounds_keep_alerted_and_recent_snapshots_and_the_newest_labels() -> None:
    st = UserLabels(0)
    st.add_snapshot(snap("alert", T0, score=0.9), CFG, T0)
    for i in range(10):
        st.add_snapshot(snap(f"e{i}", T0 + (i + 1) * MIN), CFG, T0)
    assert len(st.snaps) == CFG.max_snapshots
    assert set(st.snaps) == {"alert", "e6", "e7", "e8", "e9"}
    # an old unalerted one arriving now is the first to go: no record for it
    st.add_label(user_label(T0 + DAY), CFG, T0)
    assert st.add_snapshot(snap("stale", T0 + 30_000), CFG, T0) == ("evicted", [])
    for i in range(5):
        st.add_label(ev_label(f"x{i}", T0 + i * MIN), CFG, T0)
    assert len(st.labels) == CFG.max_labels
    assert {lb.event_id for lb in st.labels} == {None, "x3", "x4"}  # the latest ts kept


def test_state_round_trips_through_bytes() -> None:
    st = UserLabels(3)
    st.add_snapshot(snap("e1", T0, score=0.9), CFG, T0)
    st.add_label(user_label(T0 + MIN), CFG, T0)
    st.add_label(ev_label("e2", T0 + MIN), CFG, T0)
    raw = st.to_bytes(CFG)
    assert UserLabels.peek(raw) == (3, T0 + 2 * MIN)
    back = UserLabels.from_bytes(raw)
    assert back.partition == 3 and back.labels == st.labels
    assert back.snaps["e1"][0] == st.snaps["e1"][0] and back.snaps["e1"][1] == [
        user_label(T0 + MIN).mark]
    assert back.add_label(user_label(T0 + MIN), CFG, T0) == ("duplicate", [])  # marks kept
    with pytest.raises(ValueError):
        UserLabels.from_bytes(b"XX" + raw[2:])


def decision(**changes: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "rec_id": "rec:e1", "user_id": "u1", "event_id": "e1", "event_ts": T0, "ts": T0 + 5,
        "items": [], "model": "m", "model_version": "v1", "policy": "greedy",
        "explored": False, "candidates": [], "features": {"events_total": 2.0},
        "sequence": [["i1", "view", T0]], "risk_score": 0.3, "risk_model_version": "r1",
        "risk_threshold": 0.8}
    d.update(changes)
    return d


def test_snapshots_come_from_decisions_and_alerts_old_records_still_parse() -> None:
    s = snapshot_from_decision(decision())
    assert s == Snapshot("e1", T0, 0.3, "r1", 0.8, {"events_total": 2.0}, [["i1", "view", T0]])
    old = {k: v for k, v in decision().items() if not k.startswith("risk_")}
    assert snapshot_from_decision(old) is None
    assert Decision.model_validate_json(orjson.dumps(old)).risk_score is None
    Decision.model_validate_json(orjson.dumps(decision()))
    alert = {"alert_id": "alert:e2", "user_id": "u1", "event_id": "e2", "score": 0.9,
             "threshold": 0.8, "reasons": [], "model_version": "r1", "ts": T0, "event_ts": T0,
             "latency_ms": 1.0}
    assert snapshot_from_alert(alert) is None  # an older worker's alert: no snapshot
    RiskAlert.model_validate_json(orjson.dumps(alert))
    alert.update(features={"x": 1.0}, sequence=[["i", "purchase", T0]])
    a = snapshot_from_alert(alert)
    assert a is not None and a.alerted and a.features == {"x": 1.0}
    RiskAlert.model_validate_json(orjson.dumps(alert))
    with pytest.raises(KeyError):
        snapshot_from_decision({"risk_score": 0.1})


def test_the_workers_decision_record_is_a_risk_snapshot() -> None:
    ctx = PredictionContext("u1", "e7", "i2", "view", T0, None,
                            (SeqItem("i1", "purchase", T0 - MIN), SeqItem("i2", "view", T0)),
                            {"count_purchase_1m": 2.0, "events_total": 2.0})
    [pred] = FakePredictor().predict_batch([ctx])
    rec = {"rec_id": "rec:e7", "user_id": "u1", "event_id": "e7", "event_ts": T0, "ts": T0,
           "items": [{"item_id": i.item_id, "score": i.score, "propensity": i.propensity}
                     for i in pred.items], "model": pred.model,
           "model_version": pred.model_version}
    raw = decision_record(rec, ctx, pred, 0.35)
    d = Decision.model_validate_json(orjson.dumps(read_decision(orjson.loads(raw))))
    assert (d.risk_score, d.risk_model_version, d.risk_threshold) == (0.4, "fake-risk-v1", 0.35)
    s = snapshot_from_decision(orjson.loads(raw))
    assert s is not None and s.alerted and s.score == pred.risk.score
    assert s.features == ctx.features and s.sequence == [["i1", "purchase", T0 - MIN],
                                                          ["i2", "view", T0]]


def test_the_output_record_is_a_valid_risk_feedback_without_the_user_id() -> None:
    st = UserLabels(0)
    st.add_snapshot(snap("e1", T0, score=0.9), CFG, T0)
    _, [m] = st.add_label(ev_label("e1", T0 + MIN), CFG, T0)
    rec = risk_feedback_record(m, "k" * 32, "kid", T0 + 1)
    fb = RiskFeedback.model_validate_json(orjson.dumps(rec))
    assert (fb.event_id, fb.score, fb.alerted, fb.label, fb.label_scope, fb.label_ts) == (
        "e1", 0.9, True, "fraud", "event", T0 + MIN)
    again = risk_feedback_record(m, "k" * 32, "kid", T0 + 99)
    assert again["feedback_id"] == rec["feedback_id"]  # stable: consumers drop repeats
    other = risk_feedback_record(Match(m.snapshot, user_label(T0 + MIN)), "k", "kid", 0)
    assert other["feedback_id"] != rec["feedback_id"]


@pytest.mark.parametrize(("raw", "key", "kind"), [
    (b'{"user_id": "u1", "event_id": "e1", "label": "fraud", "source": "cb", "ts": 1}',
     b"u1", None),
    (b'{"user_id": "u1", "label": "legit", "source": "cb", "ts": "2025-01-01T00:00:00Z"}',
     b"u1", None),
    (b'{"event_id": "e1", "label": "fraud", "source": "cb", "ts": 1}', None, "schema"),
    (b'{"user_id": "u1", "label": "fraud", "source": "cb", "ts": 1}', None, "key_mismatch"),
    (b'{"user_id": "u1", "label": "fraud", "source": "cb", "ts": 1}', b"u2", "key_mismatch"),
    (b'{"user_id": "u1", "label": "maybe", "source": "cb", "ts": 1}', b"u1", "schema"),
    (b'{"user_id": "u1", "label": "fraud", "source": "", "ts": 1}', b"u1", "schema"),
    (b"not json", b"u1", "not_json"),
    (b"[1]", b"u1", "schema"),
    (b"", b"u1", "empty"),
    (None, b"u1", "empty"),
    (b'{"user_id": "u1", "pad": "' + b"x" * 70_000 + b'"}', b"u1", "oversized"),
])
def test_labels_are_validated_at_the_edge(raw: bytes | None, key: bytes | None,
                                          kind: str | None) -> None:
    if kind is None:
        lb = decode_risk_label(raw, key, 65_536)
        assert lb.user_id == "u1"
        return
    with pytest.raises(PoisonMessage) as info:
        decode_risk_label(raw, key, 65_536)
    assert info.value.kind == kind and "\n" not in info.value.message
