"""Risk training: learns a planted signal, calibrates, explains with feature names."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from model.encoding import feature_matrix
from model.risk.model import RiskScorer
from model.train.metrics import roc_auc
from model.train.risk import (
    Labelled,
    _split,
    load_labelled,
    purchase_features,
    train_and_evaluate_risk,
)
from model.types import FEATURE_NAMES, PredictionContext, SeqItem


def _planted(n: int = 1500, seed: int = 0) -> Labelled:
    """Fraud buys within a minute of sign-up far more often; price is noise."""
    rng = random.Random(seed)
    feats, seqs, labels, ts = [], [], [], []
    for i in range(n):
        y = int(rng.random() < 0.15)
        quick = rng.random() < (0.7 if y else 0.05)
        gap_ms = rng.randint(0, 50_000) if quick else rng.randint(3_600_000, 9 * 86_400_000)
        signup = 1_400_000_000_000 + i * 60_000
        feats.append(purchase_features(signup, signup + gap_ms, rng.uniform(5, 100)))
        seqs.append((SeqItem("signup", "view", signup),
                     SeqItem("purchase", "purchase", signup + gap_ms)))
        labels.append(y)
        ts.append(signup + gap_ms)
    return Labelled("fraud-ecommerce", FEATURE_NAMES, feats, seqs, labels, ts)


def _bayes_auc(ds: Labelled, seed: int = 0) -> float:
    """ROC-AUC of the best possible score on the test rows the trainer holds out: the planted
    signal is only "bought within a minute of sign-up", so the Bayes score is that flag."""
    _, _, test = _split(ds, "random", seed)
    return roc_auc([ds.labels[i] for i in test],
                   [float(ds.features[i]["gap_s"] <= 50) for i in test])


def test_risk_net_beats_rules_on_a_planted_signal_and_explains_it() -> None:
    torch.manual_seed(0)
    ds = _planted()
    scorer, report = train_and_evaluate_risk(ds, epochs=40)
    net = report["methods"]["risk_net"]
    # A fixed bar (it was 0.75) is unsound: with ~45 test frauds even the Bayes-optimal score
    # reads 0.75 on these rows (0.80-0.89 on other draws). Compare with it on the same rows.
    best = _bayes_auc(ds)
    assert best > 0.7  # the planted signal is there to find
    assert net["roc_auc"] >= best - 0.03
    assert net["roc_auc"] > report["methods"]["baseline-rules"]["roc_auc"]
    assert net["ece"] < 0.1  # Platt-calibrated on the validation part
    ctx = PredictionContext(
        user_id="u", event_id="e", item_id="purchase", event_type="purchase",
        ts_ms=1_000_030_000, category=None,
        sequence=(SeqItem("signup", "view", 1_000_000_000),
                  SeqItem("purchase", "purchase", 1_000_030_000)),
        features=purchase_features(1_000_000_000, 1_000_030_000, 40.0))
    slow = PredictionContext(**{**{f: getattr(ctx, f) for f in ctx.__slots__},  # type: ignore[arg-type]
                                "features": purchase_features(0, 5 * 86_400_000, 40.0)})
    quick_out, slow_out = scorer.score([ctx, slow])
    assert quick_out.score > slow_out.score
    names = [r.feature for r in quick_out.reasons]
    assert names and set(names) <= set(FEATURE_NAMES)
    assert any(n in ("gap_s", "session_duration_s", "count_view_1m", "count_view_1h",
                     "session_length") for n in names)


def test_prior_shift_moves_scores_to_the_serving_base_rate(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ds = _planted(600)
    a, _ = train_and_evaluate_risk(ds, epochs=2, seed=1)
    torch.manual_seed(0)
    b, rep = train_and_evaluate_risk(ds, epochs=2, seed=1, base_rate=0.01)
    assert rep["base_rate"]["served_prior_shift"] < 0
    x = feature_matrix(ds.features[:20], FEATURE_NAMES)
    with torch.no_grad():
        assert (b.net(x) < a.net(x)).all()
    b.save(tmp_path / "r")
    again = RiskScorer.load(tmp_path / "r")
    with torch.no_grad():
        torch.testing.assert_close(again.net(x), b.net(x))


def test_load_labelled_reads_both_public_layouts(tmp_path: Path) -> None:
    f = tmp_path / "fraud.csv"
    f.write_text("user_id,signup_time,purchase_time,purchase_value,device_id,source,browser,"
                 "sex,age,class\n1,2/24/15 22:55,4/18/15 2:47,34,D1,SEO,Chrome,M,39,0\n"
                 "2,6/7/15 20:39,6/7/15 20:39,16,D2,Ads,Chrome,F,53,1\n")
    ds = load_labelled(f)
    assert ds.kind == "fraud-ecommerce" and ds.labels == [0, 1]
    assert ds.features[1]["gap_s"] == 0.0 and ds.features[0]["gap_s"] > 86_400
    c = tmp_path / "cc.csv"
    c.write_text("Time,V1,V2,Amount,Class\n0,1.5,-2,10.0,0\n5,0.1,3,99.0,1\n")
    cc = load_labelled(c)
    assert cc.kind == "creditcard" and cc.feature_names == ("Time", "V1", "V2", "Amount")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="layout"):
        load_labelled(bad)
