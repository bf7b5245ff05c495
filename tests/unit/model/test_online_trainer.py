"""Reranker and continuous trainer: contract, prequential gate, refusal, resume, rollback."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch

from model.policy.exploration import ExplorationPredictor
from model.policy.policies import EpsilonGreedyPolicy, KeyedRandom
from model.policy.reranker import Reranker, RerankInput, featurize
from model.testing import FakePredictor
from model.train.online import OnlineConfig, OnlineTrainer, example_from_feedback
from model.types import PredictionContext, ScoredItem, SeqItem

ITEMS = [f"i{j}" for j in range(200)]
GOOD = set(ITEMS[::10])  # 20 items users engage with when shown


def world(n: int, seed: int, *, flip: bool = False) -> list[dict[str, Any]]:
    """Feedback of an epsilon-greedy logger over random base scores: users engage with a
    shown GOOD item (the first one) with probability 0.8; `flip` inverts what users like
    (the data a deliberately degraded candidate is trained on)."""
    rng = random.Random(seed)
    policy = EpsilonGreedyPolicy(start=0.2, floor=0.2)
    out = []
    for t in range(n):
        pool = rng.sample(ITEMS, 30)
        base = [rng.random() for _ in pool]
        choice = policy.choose([ScoredItem(p, s) for p, s in zip(pool, base, strict=True)], 5,
                               KeyedRandom(seed, str(t)))
        incl = dict(zip(pool, choice.inclusion, strict=True))
        shown = [c.item_id for c in choice.items]
        liked = [s for s in shown if (s in GOOD) != flip]
        eng = liked[0] if liked and rng.random() < 0.8 else None
        last = rng.choice(ITEMS)
        out.append({"rec_id": f"{seed}-{t}", "sequence": [[last, "view", t]],
                    "candidates": [{"item_id": p, "score": s, "propensity": incl[p]}
                                   for p, s in zip(pool, base, strict=True)],
                    "shown": [{"item_id": s, "propensity": incl[s]} for s in shown],
                    "engaged_item": eng, "reward": 1.0 if eng else 0.0})
    return out


def cfg(**kw: Any) -> OnlineConfig:
    return OnlineConfig(**{"window": 1500, "min_window": 300, "bootstrap": 200, **kw})


def test_featurize_keeps_rows_and_batch_of_one_equals_row_of_batch() -> None:
    r = Reranker.fresh(seed=1)
    inputs = [RerankInput([("a", "view", 1), ("b", "click", 2)], ["x", "y", "z"], [3.0, 2.0, 1.0]),
              RerankInput([], ["y"], [0.5])]
    batch = featurize(inputs, r.config)
    assert batch.offsets == [0, 3, 4] and batch.items.shape == (4,)
    assert batch.pairs.shape == (4, r.config.pair_history + 1)
    sub = featurize(inputs, r.config, rows=[[1], [0]])
    assert sub.offsets == [0, 1, 2]
    assert torch.equal(sub.items, batch.items[[1, 3]])
    both = r.score(inputs)
    assert [len(s) for s in both] == [3, 1]
    assert r.score(inputs[:1])[0] == pytest.approx(both[0], abs=1e-6)


def test_save_load_round_trip_scores_equal(tmp_path: Path) -> None:
    r = Reranker.fresh(seed=2)
    OnlineTrainer(cfg(), r).observe(world(300, 1))
    r.save(tmp_path / "m")
    again = Reranker.load(tmp_path / "m", "v9")
    inp = [RerankInput([("i3", "view", 1)], ITEMS[:30], [1.0] * 30)]
    assert again.version == "v9" and again.score(inp)[0] == pytest.approx(r.score(inp)[0], abs=1e-6)


def test_example_skips_unusable_records() -> None:
    rec = world(1, 3)[0]
    assert example_from_feedback(rec) is not None
    assert example_from_feedback({**rec, "candidates": []}) is None
    bad = {**rec, "shown": [{"item_id": "not-a-candidate", "propensity": 1.0}]}
    assert example_from_feedback(bad) is None
    ex = example_from_feedback({**rec, "engaged_item": "elsewhere", "reward": 5.0})
    assert ex is not None and ex.engaged == -1 and ex.reward == 0.0


def test_candidate_learns_and_gate_publishes_over_the_base_ranking() -> None:
    tr = OnlineTrainer(cfg(), Reranker.fresh(seed=0))
    for b in range(8):
        tr.observe(world(500, 100 + b))
    gate = tr.gate()
    assert gate.passed, gate.reason
    # the greedy slate of the base ranking gets ~ what random items get; the candidate's
    # top 5 is mostly GOOD items
    assert gate.candidate_value > 1.5 * gate.serving_value
    tr.promote("v1")
    assert tr.serving is not None and tr.serving.version == "v1" and not tr.window


def test_gate_refuses_a_degraded_candidate() -> None:
    good = Reranker.fresh(seed=0)
    t = OnlineTrainer(cfg(), good)
    for b in range(8):
        t.observe(world(500, 200 + b))
    degraded = good.copy("candidate")
    bad = OnlineTrainer(cfg(), degraded, serving=good.copy("v1"))
    for b in range(4):  # what users dislike, then the real feedback to compare on
        bad.observe(world(500, 300 + b, flip=True))
    bad.window.clear()
    bad.observe(world(1000, 400))
    gate = bad.gate()
    assert not gate.passed
    assert gate.candidate_value < gate.serving_value


def test_gate_needs_a_full_enough_window() -> None:
    t = OnlineTrainer(cfg(min_window=300), Reranker.fresh())
    t.observe(world(100, 5))
    g = t.gate()
    assert not g.passed and "needs 300" in g.reason


def test_continuous_trainer_resumes_and_follows_a_rollback(tmp_path: Path) -> None:
    from stream.settings import Settings
    from stream.trainer.loop import ContinuousTrainer

    s = Settings(data_dir=tmp_path, trainer_gate_every=1000, trainer_min_window=300)
    ct = ContinuousTrainer(s)
    for b in range(4):
        ct.process(world(500, 500 + b))
    assert ct.published, ct.gates  # v1 beat the base ranking
    ct.checkpoint()
    again = ContinuousTrainer(s)
    assert again.trainer.seen == ct.trainer.seen and len(again.trainer.replay) == len(
        ct.trainer.replay)
    inp = [RerankInput([("i1", "view", 1)], ITEMS[:30], [1.0] * 30)]
    assert again.trainer.candidate.score(inp)[0] == pytest.approx(
        ct.trainer.candidate.score(inp)[0], abs=1e-6)
    assert again.trainer.serving is not None
    assert again.trainer.serving.version == ct.published[-1]
    # another version, then a rollback in the registry: the trainer compares against the
    # version before it
    before = again.registry.latest("reranker")
    again.registry.publish("reranker", again.trainer.candidate.save)
    again.registry.rollback("reranker")
    again.sync_serving()
    assert again.trainer.serving is not None and again.trainer.serving.version == before


def _ctx(i: int) -> PredictionContext:
    return PredictionContext(user_id="u", event_id=f"e{i}", item_id="x", event_type="view",
                             ts_ms=i, category=None, sequence=(SeqItem("x", "view", i),),
                             features={}, k=5)


def test_exploration_predictor_reranks_logs_base_scores_and_names_both_versions() -> None:
    inner = FakePredictor(catalogue=ITEMS[:30])
    ex = ExplorationPredictor(inner, EpsilonGreedyPolicy(start=0.1, floor=0.1), pool=30)
    plain = ex.predict_batch([_ctx(1)])[0]
    assert plain.trace is not None and plain.trace.base_scores == ()
    r = Reranker.fresh(seed=3)
    with torch.no_grad():  # make the reranker prefer the base ranking's last items
        r.net.dense.weight.zero_()
        for j, item in enumerate(ITEMS[:30]):
            b = featurize([RerankInput([], [item], [1.0])], r.config)
            r.net.item_bias.weight[int(b.items[0])] = float(j)
    r.version = "v7"
    ex.reranker = r
    pred = ex.predict_batch([_ctx(2)])[0]
    assert pred.model_version == f"{inner.version}+rerank-v7"
    assert ex.version == pred.model_version and ex.name.endswith("+rerank")
    trace = pred.trace
    assert trace is not None and len(trace.base_scores) == 30
    assert [c.item_id for c in trace.candidates][:3] == ["i29", "i28", "i27"]
    assert sum(c.propensity for c in trace.candidates) == pytest.approx(5.0)


def test_model_gate_cli_refuses_a_degraded_candidate_and_publishes_a_better_one(
        tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from model.registry import ModelRegistry
    from stream.cli.model import model_app

    good = Reranker.fresh(seed=0)
    t = OnlineTrainer(cfg(), good)
    for b in range(6):
        t.observe(world(500, 600 + b))
    bad = good.copy()
    tb = OnlineTrainer(cfg(), bad)
    for b in range(4):
        tb.observe(world(500, 700 + b, flip=True))
    bad.save(tmp_path / "bad")
    good.save(tmp_path / "good")
    logged = tmp_path / "feedback.jsonl"
    logged.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in world(1500, 800)))
    run = CliRunner().invoke
    args = ["--feedback", str(logged), "--data-dir", str(tmp_path / "d"), "--no-announce"]
    r = run(model_app, ["gate", "reranker", "--candidate", str(tmp_path / "good"), *args])
    assert r.exit_code == 0 and "published as v1" in r.output, r.output  # beats the base
    r = run(model_app, ["gate", "reranker", "--candidate", str(tmp_path / "bad"), *args,
                        "--json"])
    assert r.exit_code == 1, r.output
    out = orjson.loads(r.stdout)
    assert out["serving"] == "v1" and not out["gate"]["passed"]
    assert ModelRegistry(tmp_path / "d").versions("reranker") == ["v1"]
