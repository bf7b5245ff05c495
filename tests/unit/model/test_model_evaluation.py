"""Metric math, the temporal split, and the evaluation pipeline on a tiny synthetic file."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from model.train.data import events_to_log, temporal_split
from model.train.evaluate import compare_methods
from model.train.hybrid import HybridConfig
from model.train.metrics import negative_weight, pr_auc, rank_metrics, roc_auc
from model.train.neural import TrainConfig
from model.train.pipeline import evaluate_recommenders


def test_rank_metrics_by_hand() -> None:
    ranked = [["a", "b", "c"], ["x", "y", "z"], ["q", "r", "t"]]
    m = rank_metrics(ranked, ["a", "z", "nope"], k=20)
    assert m["hr@20"] == pytest.approx(2 / 3)
    assert m["mrr@20"] == pytest.approx((1 + 1 / 3) / 3)
    assert m["ndcg@20"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    # outside the cut-off counts as a miss
    assert rank_metrics([["a", "b"]], ["b"], k=1) == {"hr@1": 0.0, "mrr@1": 0.0, "ndcg@1": 0.0}


def test_auc_metrics_by_hand() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # ties count half
    # ranking: 1 (p), 0 (n), 1 (p): AP = 1/2 * 1 + 1/2 * 2/3
    assert pr_auc([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(0.5 + 1 / 3)
    # half the weight on negatives raises precision at the second hit to 2 / 2.5
    w = negative_weight(1 / 3, 0.5)
    assert w == pytest.approx(0.5)
    assert pr_auc([1, 0, 1], [0.9, 0.8, 0.7], w) == pytest.approx(0.5 + 0.5 * 2 / 2.5)


def _synthetic_events() -> list[dict[str, object]]:
    """Users walk a ring of items in order: the next item is always current + 1."""
    ev = []
    for u in range(40):
        for j in range(12):
            ev.append({"user_id": f"u{u}", "item_id": f"i{(u + j) % 25}", "type": "view",
                       "ts": 1_000_000 * j + u})
    return ev


def test_temporal_split_keeps_history_and_skips_trigger_repeats() -> None:
    ev = _synthetic_events()
    ev.append({"user_id": "u0", "item_id": "i11", "type": "purchase", "ts": 11_000_001})
    split = temporal_split(events_to_log(ev), test_frac=0.25, max_cases=None)
    assert all(e.ts_ms < split.t_split for s in split.train.values() for e in s)
    assert all(c.target != c.history[-1].item_id for c in split.test)
    # a test case sees the user's train-period events too
    assert max(len(c.history) for c in split.test) > 3


def test_compare_methods_scores_every_method_on_the_same_cases(tmp_path: Path) -> None:
    f = tmp_path / "events.jsonl"
    f.write_text("\n".join(json.dumps({"event_id": f"e{n}", **e})
                           for n, e in enumerate(_synthetic_events())))
    cfg = TrainConfig(dim=16, layers=1, heads=1, max_len=8, epochs=20, budget_s=20,
                      batch_size=32, negatives=16, lr=1e-2)
    comp = evaluate_recommenders(f, layout="jsonl", cfg=cfg, test_frac=0.25)
    assert set(comp.methods) == {"popularity", "covisitation", "gru", "sasrec", "hybrid",
                                 "hybrid_without_sequence"}
    for row in comp.methods.values():
        assert {"hr@20", "mrr@20", "ndcg@20", "train_s", "infer_ms_per_case", "valid"} <= set(row)
        assert 0.0 <= row["mrr@20"] <= row["ndcg@20"] <= row["hr@20"] <= 1.0
        assert 0.0 <= row["valid"]["mrr@20"] <= row["valid"]["hr@20"] <= 1.0
    # the ring is learnable: co-visitation finds it exactly, popularity cannot
    assert comp.methods["covisitation"]["hr@20"] == 1.0
    assert comp.methods["popularity"]["mrr@20"] < 0.5
    assert comp.methods["sasrec"]["hr@20"] > 0.5
    # the hybrid's candidates hold the ring's next item, and its ranker finds it
    hybrid = comp.methods["hybrid"]
    assert hybrid["candidate_recall@" + str(HybridConfig().candidates.total + 50)] == 1.0
    assert hybrid["hr@20"] == 1.0
    # served: the best on the validation slice (before the test part), never picked on test
    assert comp.served in comp.methods
    assert comp.methods[comp.served]["valid"]["hr@20"] == max(
        r["valid"]["hr@20"] for r in comp.methods.values())
    assert comp.split["test_cases"] > 0
    assert comp.split["valid_from_ms"] < comp.split["t_split_ms"]


def test_compare_methods_rejects_an_empty_test_period() -> None:
    ev = [{"user_id": "u", "item_id": "a", "type": "view", "ts": 1}]
    with pytest.raises(ValueError):
        compare_methods(temporal_split(events_to_log(ev)))
