"""Online risk trainer: encoding as served, prequential scores, ROC-AUC gate, recalibration,
refusal of degraded candidates, restart and rollback in the continuous trainer."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch

from model.nets import RiskNet
from model.registry import ModelRegistry
from model.risk.model import RiskScorer
from model.serving import RULES_VERSION
from model.train.metrics import auc_rows, log_loss, paired_auc_bootstrap, roc_auc
from model.train.risk_data import RiskServing, example_from_risk_feedback
from model.train.risk_online import OnlineRiskTrainer, RiskOnlineConfig, fresh_net
from model.types import FEATURE_NAMES, PredictionContext, SeqItem

T0 = 1_700_000_000_000
RULE_SCORE = 0.0067  # what the rules give every event of this world (no rule feature fires)


def risk_world(n: int, seed: int, *, fraud_rate: float = 0.1, start: int = 0,
               version: str = RULES_VERSION, score: float = RULE_SCORE) -> list[dict[str, Any]]:
    """risk-feedback records as the label join writes them. Frauds buy within seconds of
    their previous event, pricier items, after few views; the features the rules watch
    (devices, IPs, bursts) look the same for everyone, so the rule score cannot tell."""
    rng = random.Random(seed)
    out = []
    for t in range(start, start + n):
        fraud = rng.random() < fraud_rate
        gap = rng.expovariate(1 / 4) if fraud else rng.expovariate(1 / 400)
        price = rng.lognormvariate(5.0, 0.6) if fraud else rng.lognormvariate(3.5, 0.8)
        views = rng.randint(0, 2) if fraud else rng.randint(1, 12)
        f = dict.fromkeys(FEATURE_NAMES, 0.0)
        f.update({"events_total": views + 1.0, "count_view": float(views),
                  "count_purchase": 1.0, "gap_s": gap, "price": price,
                  "distinct_devices_24h": 1.0, "distinct_ips_24h": 1.0,
                  "session_length": views + 1.0})
        ts = T0 + t * 1000
        seq = [[f"i{j}", "view", ts - (views - j) * 60_000] for j in range(views)]
        seq.append(["i", "purchase", ts])
        out.append({"feedback_id": f"{seed}-{t}", "user_key": "k", "key_id": "k1",
                    "event_id": f"e{seed}-{t}", "event_ts": ts, "features": f,
                    "sequence": seq, "score": score, "model_version": version,
                    "threshold": 0.8, "alerted": score >= 0.8,
                    "label": "fraud" if fraud else "legit", "label_scope": "event",
                    "label_source": "chargeback", "label_ts": ts + 1, "emitted_at": ts + 2})
    return out


def cfg(**kw: Any) -> RiskOnlineConfig:
    return RiskOnlineConfig(**{"window": 2000, "min_positives": 30, "min_negatives": 300, **kw})


def trained(records: int, seed: int = 0) -> OnlineRiskTrainer:
    """A trainer whose fresh candidate learned from `records` records of the world."""
    tr = OnlineRiskTrainer(cfg(), fresh_net(seed), RiskServing(RULES_VERSION, None),
                           scaled=False)
    for b in range(0, records, 500):
        tr.observe(risk_world(min(500, records - b), seed, start=b))
    return tr


@pytest.fixture(scope="module")
def learned() -> OnlineRiskTrainer:
    """A fresh candidate after 3,000 labelled records, its window the last 2,000 (shared:
    tests deep-copy what they change)."""
    return trained(3000)


def negated(net: RiskNet) -> RiskNet:
    """The same net with its output layers negated: it ranks frauds last."""
    bad = copy.deepcopy(net)
    with torch.no_grad():
        for layer in (bad.linear, bad.mlp[-1]):
            layer.weight.neg_()
            layer.bias.neg_()
    return bad


def test_auc_rows_is_the_mann_whitney_auc_with_ties() -> None:
    rng = random.Random(1)
    y = [rng.random() < 0.2 for _ in range(300)]
    s = [round(rng.random() + 0.3 * t, 1) for t in y]  # rounded: many ties
    ones = torch.ones(1, len(y), dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    got = auc_rows(torch.tensor(s, dtype=torch.float64), ones * yt, ones * (1 - yt))
    assert float(got[0]) == pytest.approx(roc_auc([int(v) for v in y], s), abs=1e-12)
    # identical scores: never "better"; a perfect ranking against a random one: always
    assert paired_auc_bootstrap([int(v) for v in y], s, s, 100, 0) == 0.0
    assert paired_auc_bootstrap([int(v) for v in y], [float(v) for v in y],
                                [rng.random() for _ in y], 100, 0) == 1.0


def test_examples_are_encoded_as_the_served_scorer_encodes_them(
        learned: OnlineRiskTrainer) -> None:
    net = learned.candidate
    recs = risk_world(20, 9)
    tr = OnlineRiskTrainer(cfg(), net, RiskServing(RULES_VERSION, None))
    examples = [example_from_risk_feedback(r, net.config) for r in recs]
    assert all(e is not None for e in examples)
    mine = tr.candidate_probs([e for e in examples if e is not None])
    ctxs = [PredictionContext(user_id="u", event_id=r["event_id"], item_id="i",
                              event_type="purchase", ts_ms=r["event_ts"], category=None,
                              sequence=tuple(SeqItem(*s) for s in r["sequence"]),
                              features=r["features"]) for r in recs]
    served = [o.score for o in RiskScorer(net).score(ctxs)]
    assert mine == pytest.approx(served, abs=1e-5)
    assert example_from_risk_feedback({**recs[0], "label": "maybe"}, net.config) is None
    assert example_from_risk_feedback({**recs[0], "features": None}, net.config) is None
    assert example_from_risk_feedback({**recs[0], "sequence": [["x"]]}, net.config) is None


def test_each_batch_is_scored_before_it_is_trained_on(learned: OnlineRiskTrainer) -> None:
    tr = copy.deepcopy(learned)
    before = copy.deepcopy(tr.candidate)
    batch = risk_world(200, 3, start=10_000)
    expected = OnlineRiskTrainer(cfg(), before, tr.serving).candidate_probs(
        [e for r in batch if (e := example_from_risk_feedback(r, before.config))])
    tr.window.clear()
    tr.observe(batch)
    assert [c for _, c, _ in tr.window] == pytest.approx(expected, abs=1e-6)
    # and it was trained on afterwards: the candidate moved
    assert tr.candidate_probs([tr.window[0][0]]) != pytest.approx([expected[0]], abs=1e-6)
    # the serving rules' scores are the ones the worker logged for them
    assert {s for _, _, s in tr.window} == {RULE_SCORE}


def test_fresh_candidate_beats_the_rules_and_publishes_recalibrated(
        learned: OnlineRiskTrainer) -> None:
    tr = copy.deepcopy(learned)
    gate = tr.gate()
    assert gate.decided and gate.passed, gate.reason
    assert gate.serving_auc == pytest.approx(0.5) and gate.candidate_auc > 0.8
    rows = list(tr.window)
    y = [e.y for e, _, _ in rows]
    x_probs = tr.candidate_probs([e for e, _, _ in rows])
    cal = tr.recalibrate()
    assert cal is not None and cal["scale"] > 0
    after = tr.candidate_probs([e for e, _, _ in rows])
    # Platt: a monotone map, so the ranking the gate judged is the one published
    assert roc_auc(y, after) == pytest.approx(roc_auc(y, x_probs), abs=1e-3)
    assert cal["log_loss"] == pytest.approx(log_loss(y, after))
    assert log_loss(y, after) <= log_loss(y, x_probs) + 1e-6
    meta = tr.publish_metadata(gate, cal)
    assert meta["compared_with"] == RULES_VERSION and meta["data"]["trained_event_ts"][0] == T0
    tr.promote("v1")
    assert tr.serving.version == "v1" and not tr.window


def test_candidate_fine_tuned_from_a_weak_serving_model_is_accepted() -> None:
    weak = trained(300).candidate  # a few hundred labels: a weak model
    serving = RiskServing("v1", copy.deepcopy(weak))
    tr = OnlineRiskTrainer(cfg(lr=3e-3), copy.deepcopy(weak), serving)
    for b in range(5):
        tr.observe(risk_world(500, 20 + b, start=b * 500, version="v1", score=0.5))
    gate = tr.gate()
    assert gate.passed, gate.reason
    assert gate.candidate_auc > gate.serving_auc + 0.01


def test_gate_refuses_degraded_candidates(learned: OnlineRiskTrainer) -> None:
    good = learned.candidate
    serving = RiskServing("v1", copy.deepcopy(good))
    # weights negated: ranks frauds last
    neg = OnlineRiskTrainer(cfg(), negated(good), serving)
    neg.observe(risk_world(1500, 40), train=False)
    gate = neg.gate()
    assert gate.decided and not gate.passed
    assert gate.candidate_auc < 0.5 < gate.serving_auc
    # fine-tuned on labels shuffled across records, then compared on real ones
    shuffled = OnlineRiskTrainer(cfg(lr=1e-2), copy.deepcopy(good), serving)
    rng = random.Random(0)
    for b in range(4):
        recs = risk_world(500, 50 + b, start=b * 500)
        labels = [r["label"] for r in recs]
        rng.shuffle(labels)
        shuffled.observe([{**r, "label": lb} for r, lb in zip(recs, labels, strict=True)])
    shuffled.window.clear()
    shuffled.observe(risk_world(1500, 60), train=False)
    gate = shuffled.gate()
    assert gate.decided and not gate.passed
    assert gate.candidate_auc < gate.serving_auc


def test_no_gate_decision_without_enough_frauds_and_repeats_are_dropped() -> None:
    tr = OnlineRiskTrainer(cfg(), fresh_net(), RiskServing(RULES_VERSION, None), scaled=False)
    recs = risk_world(400, 7, fraud_rate=0.03)
    tr.observe(recs)
    tr.observe(recs[:50])  # re-delivered by the at-least-once join: same feedback ids
    assert tr.duplicates == 50 and len(tr.window) == 400
    gate = tr.gate()
    assert not gate.decided and not gate.passed and "no decision" in gate.reason


def test_rollback_rescores_the_window_with_the_serving_model(
        learned: OnlineRiskTrainer) -> None:
    tr = copy.deepcopy(learned)
    tr.promote("v2")
    tr.observe(risk_world(300, 70, start=5000))
    old = trained(200, seed=1).candidate
    tr.set_serving(RiskServing("v1", old))
    want = RiskServing("v1", old).score_records(risk_world(300, 70, start=5000))
    assert [s for _, _, s in tr.window] == pytest.approx(want, abs=1e-6)
    tr.set_serving(RiskServing(RULES_VERSION, None))  # logged by the rules: their scores
    assert {s for _, _, s in tr.window} == {RULE_SCORE}


def test_continuous_trainer_publishes_risk_announces_resumes_and_follows_rollback(
        tmp_path: Path) -> None:
    from stream.settings import Settings
    from stream.trainer.loop import ContinuousTrainer

    s = Settings(data_dir=tmp_path, trainer_risk_gate_every=1000, trainer_risk_window=2000)
    said: list[tuple[str, str, str]] = []
    ct = ContinuousTrainer(s, lambda *a: said.append(a))
    assert ct.risk.serving.version == RULES_VERSION
    for b in range(4):
        ct.process_risk(risk_world(500, b, start=b * 500))
    # gate checks at 1,000 and 2,000 records: each beat what served then (first the rules)
    published = ct.risk_published
    assert published and published[0] == "v1", ct.risk_gates
    assert said == [("risk", v, "publish") for v in published] and ct.published == []
    reg = ModelRegistry(tmp_path)
    man = reg.manifest("risk", "v1")
    assert man["gate"]["passed"] and man["compared_with"] == RULES_VERSION
    assert man["metrics"]["serving"]["roc_auc"] == pytest.approx(0.5)
    assert man["calibration"]["method"] == "platt"
    latest = reg.latest("risk")
    assert latest == published[-1] and ct.risk.serving.version == latest
    net = RiskScorer.load(reg.path("risk", latest)).net
    assert torch.equal(net.calib, ct.risk.candidate.calib)

    ct.process_risk(risk_world(300, 9, start=9000))
    ct.checkpoint()
    again = ContinuousTrainer(s)
    for key in ("seen", "trained", "duplicates"):
        assert getattr(again.risk, key) == getattr(ct.risk, key)
    assert len(again.risk.replay) == len(ct.risk.replay)
    assert len(again.risk.window) == len(ct.risk.window) == 300
    assert again.since_risk_gate == 300 and again.risk.serving.version == latest
    probe = [e for e, _, _ in list(ct.risk.window)[:20]]
    assert again.risk.candidate_probs(probe) == pytest.approx(
        ct.risk.candidate_probs(probe), abs=1e-6)
    again.process_risk(risk_world(300, 9, start=9000))  # replayed after a crash: dropped
    assert again.risk.duplicates == ct.risk.duplicates + 300
    assert len(again.risk.window) == 300

    reg.publish("risk", RiskScorer(fresh_net(5)).save)  # a newer version, then rolled back
    assert reg.rollback("risk") == latest
    reg.rollback("risk")  # one more: the version before the trainer's latest
    before = reg.latest("risk")
    assert before != latest
    again.sync_risk_serving()
    # compared against it from now on, on the same held-out records
    assert again.risk.serving.version == before and len(again.risk.window) == 300


def test_trainer_cli_trains_risk_from_a_file(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from stream.cli.main import app

    path = tmp_path / "risk-feedback.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in risk_world(2500, 3)))
    r = CliRunner().invoke(app, ["trainer", "--risk-feedback", str(path), "--json"],
                           env={"LAMSTREAM_DATA_DIR": str(tmp_path / "d"),
                                "LAMSTREAM_TRAINER_RISK_WINDOW": "2000"})
    assert r.exit_code == 0, r.output
    out = orjson.loads(r.stdout.strip().splitlines()[-1])
    published = out["risk"]["published"]
    assert published[:1] == ["v1"] and out["published"] == [] and out["risk"]["seen"] == 2500
    assert ModelRegistry(tmp_path / "d").latest("risk") == published[-1]
    assert all(g["gate"]["decided"] for g in out["risk"]["gates"])
