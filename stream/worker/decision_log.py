"""The decision log: what the worker showed, why, and what it knew (`decisions` topic)."""

from __future__ import annotations

from typing import Any

import orjson

from model.types import Prediction, PredictionContext


def decision_record(rec: dict[str, Any], ctx: PredictionContext, pred: Prediction,
                    risk_threshold: float) -> bytes:
    """The `decisions` record of one published recommendation: what was shown and why, and
    the features and item sequence exactly as the model saw them (never recomputed later).
    It is also the risk model's point-in-time snapshot of the event (its score, version and
    the alert threshold ride along), which the risk-label join reads (stream.state.labels)."""
    trace = pred.trace
    d: dict[str, Any] = {
        "rec_id": rec["rec_id"], "user_id": rec["user_id"], "event_id": rec["event_id"],
        "event_ts": rec["event_ts"], "ts": rec["ts"], "items": rec["items"],
        "model": rec["model"], "model_version": rec["model_version"],
        "features": ctx.features,
        # SeqItem is a tuple: orjson writes plain tuples as [item, type, ts] arrays
        "sequence": list(map(tuple, ctx.sequence)),
        "category": ctx.category,
        "risk_score": pred.risk.score, "risk_model_version": pred.risk_model_version,
        "risk_threshold": risk_threshold,
    }
    if trace is not None:
        d["policy"] = trace.policy
        d["explored"] = trace.explored
        d["candidates"] = [{"item_id": c[0], "score": c[1], "propensity": p}
                           for c, p in zip(trace.pool, trace.inclusion, strict=True)]
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
        d["candidates"] = rec["items"]
    return orjson.dumps(d)
