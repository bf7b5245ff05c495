"""One builder per record lamstream writes, each the dict (or bytes) of its stream.schemas model.

The worker's builders run once per decision on the hot path, so they build plain dicts for
orjson rather than pydantic models (a model costs several times the dict); tests/unit/stream/
test_records.py validates every builder's output against its schema, field for field.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from model.types import Prediction, PredictionContext
from stream.errors import PoisonMessage
from stream.schemas import Event
from stream.state.labels import Match, feedback_id
from stream.state.rewards import Outcome


def recommendation_record(ev: Event, pred: Prediction, latency_ms: float, ts: int
                          ) -> dict[str, Any]:
    """stream.schemas.Recommendation: the next items for the user after `ev`."""
    return {
        "rec_id": f"rec:{ev.event_id}", "user_id": ev.user_id, "event_id": ev.event_id,
        "items": [{"item_id": i.item_id, "score": i.score, "propensity": i.propensity}
                  for i in pred.items],
        "model": pred.model, "model_version": pred.model_version,
        "ts": ts, "event_ts": ev.ts, "latency_ms": round(latency_ms, 3),
        "explored": pred.trace is not None and pred.trace.explored,
    }


def alert_record(ev: Event, pred: Prediction, ctx: PredictionContext, threshold: float,
                 latency_ms: float, ts: int) -> dict[str, Any]:
    """stream.schemas.RiskAlert: the risk score of `ev` reached the threshold."""
    risk = pred.risk
    return {
        "alert_id": f"alert:{ev.event_id}", "user_id": ev.user_id, "event_id": ev.event_id,
        "score": risk.score, "threshold": threshold,
        "reasons": [{"feature": r.feature, "value": r.value, "contribution": r.contribution}
                    for r in risk.reasons],
        "model_version": pred.risk_model_version,
        "ts": ts, "event_ts": ev.ts, "latency_ms": round(latency_ms, 3),
        # the snapshot the risk model scored: events that trigger no recommendation have no
        # decision record, and the risk-label join needs one for every alerted event (alerts
        # are rare: this costs little)
        "features": ctx.features, "sequence": list(map(tuple, ctx.sequence)),
    }


# The `decisions` wire form (internal topic): the ranked pool as three columns and the shown
# slate as positions in it, not a list of {"item_id", "score", "propensity"} objects twice:
# 4.5 KB a decision became ~2.9 KB on the Taobao stream, every float kept exactly.
# read_decision expands it (and passes records of older workers through unchanged).
DECISION_FORMAT = 2


def decision_record(rec: dict[str, Any], ctx: PredictionContext, pred: Prediction,
                    risk_threshold: float) -> bytes:
    """stream.schemas.Decision of one published recommendation `rec` (in the compact wire form
    read_decision expands): what was shown and why, and the features and item sequence
    exactly as the model saw them (never recomputed later). It is also the risk model's
    point-in-time snapshot of the event (its score, version and the alert threshold ride
    along), which the risk-label join reads."""
    trace = pred.trace
    d: dict[str, Any] = {
        "v": DECISION_FORMAT,
        "rec_id": rec["rec_id"], "user_id": rec["user_id"], "event_id": rec["event_id"],
        "event_ts": rec["event_ts"], "ts": rec["ts"],
        "model": rec["model"], "model_version": rec["model_version"],
        "features": ctx.features,
        # SeqItem is a tuple: orjson writes plain tuples as [item, type, ts] arrays
        "sequence": list(map(tuple, ctx.sequence)),
        "category": ctx.category,
        "risk_score": pred.risk.score, "risk_model_version": pred.risk_model_version,
        "risk_threshold": risk_threshold,
    }
    items = rec["items"]
    if trace is not None:
        d["policy"] = trace.policy
        d["explored"] = trace.explored
        pool = trace.pool
        d["pool"] = [[c[0] for c in pool], [c[1] for c in pool], list(trace.inclusion)]
        if trace.base_scores:
            d["base_scores"] = list(trace.base_scores)
        if trace.candidate_categories:
            d["candidate_categories"] = list(trace.candidate_categories)
            d["recent_categories"] = list(trace.recent_categories)
        if trace.shadow_policy is not None:
            d["shadow_policy"] = trace.shadow_policy
            d["shadow_items"] = list(trace.shadow_items)
            d["shadow_inclusion"] = list(trace.shadow_inclusion)
    else:
        d["policy"] = "greedy"
        d["explored"] = False
        d["pool"] = [[i["item_id"] for i in items], [i["score"] for i in items],
                     [i["propensity"] for i in items]]
    shown = _positions(items, d["pool"])
    if shown is None:  # a slate item not in the pool as logged: written out in full
        d["items"] = items
    else:
        d["shown"] = shown
    return orjson.dumps(d)


def _positions(items: list[dict[str, Any]], pool: list[list[Any]]) -> list[int] | None:
    """Each shown item's position in the pool, when the pool holds it with the same score
    and propensity; else None."""
    at = {item: n for n, item in enumerate(pool[0])}
    out = []
    for it in items:
        n = at.get(it["item_id"])
        if n is None or pool[1][n] != it["score"] or pool[2][n] != it["propensity"]:
            return None
        out.append(n)
    return out


def read_decision(obj: dict[str, Any]) -> dict[str, Any]:
    """A parsed `decisions` record as stream.schemas.Decision: the compact form expanded
    (`items` and `candidates` as lists of {"item_id", "score", "propensity"}); a record of
    an older worker as it is. KeyError / TypeError / ValueError when malformed."""
    pool = obj.pop("pool", None)
    obj.pop("v", None)
    if pool is None:
        return obj
    ids, scores, inclusion = pool
    cands = [{"item_id": i, "score": s, "propensity": p}
             for i, s, p in zip(ids, scores, inclusion, strict=True)]
    obj["candidates"] = cands
    shown = obj.pop("shown", None)
    if shown is not None:
        obj["items"] = [cands[n] for n in shown]
    return obj


def feedback_record(o: Outcome, user_key: str, key_id: str, now_ms: int) -> dict[str, Any]:
    """stream.schemas.Feedback: a closed decision with its reward; the decision's own
    snapshot, no raw ids."""
    d = o.decision
    return {
        "rec_id": d["rec_id"], "user_key": user_key, "key_id": key_id,
        "features": d["features"], "sequence": d["sequence"], "category": d.get("category"),
        "shown": d["items"], "candidates": d.get("candidates") or d["items"],
        "engaged_item": o.engaged_item, "engaged_type": o.engaged_type, "reward": o.reward,
        "model": d["model"], "model_version": d["model_version"], "policy": d["policy"],
        "explored": bool(d.get("explored", False)),
        "shadow_policy": d.get("shadow_policy"), "shadow_inclusion": d.get("shadow_inclusion"),
        "base_scores": d.get("base_scores"),
        "candidate_categories": d.get("candidate_categories"),
        "recent_categories": d.get("recent_categories"),
        "decision_ts": d["event_ts"], "outcome_ts": o.outcome_ts, "emitted_at": now_ms,
    }


def risk_feedback_record(m: Match, user_key: str, key_id: str, now_ms: int
                         ) -> dict[str, Any]:
    """stream.schemas.RiskFeedback: the snapshot as scored, the label, no raw user id."""
    s, lb = m.snapshot, m.label
    return {
        "feedback_id": feedback_id(m), "user_key": user_key, "key_id": key_id,
        "event_id": s.event_id, "event_ts": s.event_ts, "features": s.features,
        "sequence": s.sequence, "score": s.score, "model_version": s.model_version,
        "threshold": s.threshold, "alerted": s.alerted, "label": lb.label,
        "label_scope": lb.scope, "label_source": lb.source, "label_ts": lb.ts,
        "emitted_at": now_ms,
    }


def dlq_record(bad: PoisonMessage, raw: bytes | None, key: bytes | None, topic: str,
               partition: int, offset: int, received_at: int) -> bytes:
    """stream.schemas.DlqRecord of one rejected input record, ready to send (any agent, any
    topic)."""
    return orjson.dumps({
        "error": bad.message, "error_kind": bad.kind,
        "raw": base64.b64encode(raw or b"").decode(),
        "key": base64.b64encode(key).decode() if key is not None else None,
        "topic": topic, "partition": partition, "offset": offset, "received_at": received_at,
    })
