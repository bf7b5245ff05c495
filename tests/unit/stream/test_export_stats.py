"""`lamstream export stats`: exact aggregates, and the Laplace release with bounded users."""

from __future__ import annotations

import json
import math
import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from stream.cli.main import app
from stream.errors import UsageError
from stream.feedback.stats_export import (
    QUERIES,
    Aggregates,
    bound_contributions,
    export_stats,
    laplace,
    plan,
    release,
    threshold_for,
)

runner = CliRunner()


def fb(rec_id: str, user: str, *, version: str = "v1", policy: str = "softmax",
       reward: float = 0.0, typ: str | None = None, item: str | None = None,
       explored: bool = False) -> dict[str, Any]:
    return {"rec_id": rec_id, "user_key": user, "key_id": "k1", "features": {},
            "sequence": [], "shown": [], "candidates": [], "engaged_item": item,
            "engaged_type": typ, "reward": reward, "model": "recommender",
            "model_version": version, "policy": policy, "explored": explored,
            "decision_ts": 0, "outcome_ts": 0, "emitted_at": 0}


RECORDS = [
    fb("r1", "u1", reward=1.0, typ="click", item="a"),
    fb("r2", "u1", reward=5.0, typ="purchase", item="b", explored=True),
    fb("r3", "u2", version="v2", reward=2.0, typ="add_to_cart", item="a"),
    fb("r4", "u2", version="v2"),
    fb("r5", "u3", policy="epsilon_greedy", reward=1.0, typ="click", item="c"),
]


def test_exact_values_without_epsilon() -> None:
    out = export_stats(RECORDS, top=2)
    assert out["epsilon"] is None and out["queries"] == {} and out["protected"] == []
    assert "exact" in out["not_protected"][0]
    assert out["stats"] == {
        "records": 5,
        "records_per_model_version": {"v1": 3, "v2": 2},
        "records_per_policy": {"epsilon_greedy": 1, "softmax": 4},
        "rewarded": 4,
        "reward_sum": 9.0,
        "mean_reward": 1.8,
        "reward_sum_per_model_version": {"v1": 7.0, "v2": 2.0},
        "mean_reward_per_model_version": {"v1": round(7 / 3, 4), "v2": 1.0},
        "engagements_per_type": {"add_to_cart": 1, "click": 2, "purchase": 1},
        "explored": 1,
        "explored_fraction": 0.2,
        "top_items": [{"item_id": "a", "count": 2}, {"item_id": "b", "count": 1}],
    }


def test_a_user_counts_with_at_most_max_per_user_records() -> None:
    heavy = [fb(f"h{i}", "heavy", item="x") for i in range(100)]
    records = heavy + RECORDS
    kept = bound_contributions(records, 7)
    per_user = Counter(r["user_key"] for r in kept)
    assert per_user == {"heavy": 7, "u1": 2, "u2": 2, "u3": 1}
    # deterministic: the same records whatever the input order
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    assert {r["rec_id"] for r in bound_contributions(shuffled, 7)} == {r["rec_id"] for r in kept}
    # and the release sees the bounded data: with a huge epsilon the noise is negligible
    others = [fb(f"o{i}", f"other{i}", item="x") for i in range(3)]
    out = export_stats(records + others, epsilon=1e9, max_per_user=7, delta=0.4, seed=0)
    assert out["stats"]["records"] == 15
    assert out["stats"]["top_items"][0] == {"item_id": "x", "count": 10}


def test_noise_scale_is_sensitivity_over_the_epsilon_share() -> None:
    queries = plan(2.0, max_per_user=10, max_reward=5.0, delta=1e-6)
    share = 2.0 / len(QUERIES)
    assert set(queries) == set(QUERIES)
    for name, q in queries.items():
        assert q.epsilon == pytest.approx(share)
        assert q.sensitivity == (50.0 if "reward_sum" in name else 10.0)
        assert q.noise_scale == pytest.approx(q.sensitivity / share)
    assert sum(q.epsilon for q in queries.values()) == pytest.approx(2.0)
    assert sum(q.delta or 0 for q in queries.values()) == pytest.approx(1e-6)
    # Laplace(b): mean |x| = b, std = sqrt(2) b
    rng = random.Random(0)
    draws = [laplace(rng, 3.0) for _ in range(20000)]
    assert statistics.fmean(abs(x) for x in draws) == pytest.approx(3.0, rel=0.05)
    assert statistics.pstdev(draws) == pytest.approx(3.0 * math.sqrt(2), rel=0.05)


def test_noisy_count_is_unbiased_and_has_the_planned_spread() -> None:
    queries = plan(len(QUERIES), max_per_user=20, max_reward=5.0, delta=1e-6)  # share 1
    b = queries["records"].noise_scale
    assert b == 20.0
    agg = Aggregates(records=1000, explored=500, reward_sum=800.0)
    n = 3000
    outs = [release(agg, queries, random.Random(seed), max_reward=5.0, top=10)
            for seed in range(n)]
    counts = [o["records"] for o in outs]
    bound = 4 * math.sqrt(2) * b / math.sqrt(n)  # 4 standard errors
    assert abs(statistics.fmean(counts) - 1000) < bound
    assert statistics.pstdev(counts) == pytest.approx(math.sqrt(2) * b, rel=0.1)
    sums = [o["reward_sum"] for o in outs]
    assert abs(statistics.fmean(sums) - 800) < 4 * math.sqrt(2) * 100 / math.sqrt(n)
    assert all(0 <= o["explored_fraction"] <= 1 for o in outs)
    assert all(0 <= o["mean_reward"] <= 5 for o in outs)


def test_threshold_suppresses_rare_names_and_keeps_frequent_ones() -> None:
    b, m, delta = 4.0, 5, 1e-6
    tau = threshold_for(b, m, delta)

    def leak(counts: list[int]) -> float:  # P(any of one user's own names is shown)
        return sum(math.exp(-(tau - c) / b) / 2 for c in counts)

    worst = max(leak([m - k + 1] + [1] * (k - 1)) for k in range(1, m + 1))
    assert worst == pytest.approx(delta)  # the closed form is tight at the worst split
    queries = plan(len(QUERIES), max_per_user=1, max_reward=5.0, delta=1e-6)
    agg = Aggregates(records=10_000)
    agg.engaged_items.update({"rare": 1, "popular": 5000})
    agg.records_per_model_version.update({"v1": 9999, "v2": 1})
    for seed in range(200):
        out = release(agg, queries, random.Random(seed), max_reward=5.0, top=10)
        assert [t["item_id"] for t in out["top_items"]] == ["popular"]
        assert list(out["records_per_model_version"]) == ["v1"]
        assert list(out["reward_sum_per_model_version"]) == ["v1"]


def test_seeded_release_is_deterministic() -> None:
    records = RECORDS * 3
    a = export_stats(records, epsilon=1.0, seed=7)
    assert a == export_stats(records, epsilon=1.0, seed=7)
    assert a["stats"] != export_stats(records, epsilon=1.0, seed=8)["stats"]
    assert any("--seed 7" in line for line in a["not_protected"])
    unseeded = export_stats(records, epsilon=1.0)
    assert not any("--seed" in line for line in unseeded["not_protected"])


@pytest.mark.parametrize("kwargs, message", [
    ({"epsilon": 0.0}, "--epsilon must be a number > 0"),
    ({"epsilon": -1.0}, "--epsilon must be a number > 0"),
    ({"epsilon": 1.0, "max_per_user": 0}, "--max-per-user must be at least 1"),
    ({"epsilon": 1.0, "delta": 1.0}, "--delta must be between 0 and 1"),
    ({"epsilon": 1.0, "max_reward": 0.0}, "--max-reward must be a number > 0"),
    ({"top": 0}, "--top must be at least 1"),
])
def test_invalid_options_raise(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        export_stats(RECORDS, **kwargs)


def test_cli_exact_noisy_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "feedback.jsonl"
    # a `lamstream tail` line ({"key", "value"}) and a bare record
    lines = [json.dumps({"key": r["user_key"], "value": r}) for r in RECORDS[:2]]
    lines += [json.dumps(r) for r in RECORDS[2:]]
    path.write_text("\n".join(lines) + "\n")
    r = runner.invoke(app, ["export", "stats", "--feedback", str(path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["stats"]["records"] == 5

    r = runner.invoke(app, ["export", "stats", "--feedback", str(path)])
    assert r.exit_code == 0 and "5 feedback records (exact, not private)" in r.stdout

    out_file = tmp_path / "stats.json"
    r = runner.invoke(app, ["export", "stats", "--feedback", str(path), "--epsilon", "1",
                                   "--seed", "3", "--json", "--out", str(out_file)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out == json.loads(out_file.read_text())
    assert out["epsilon"] == 1.0 and out["max_per_user"] == 20 and out["delta"] == 1e-6
    assert out["queries"]["records"]["noise_scale"] == pytest.approx(20 / (1 / len(QUERIES)))
    assert "threshold" in out["queries"]["engaged_items"]
    assert out["protected"] and out["not_protected"] and "epsilon / 9" in out["epsilon_split"]

    r = runner.invoke(app, ["export", "stats", "--feedback", str(path), "--epsilon", "0"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == ["error: --epsilon must be a number > 0, not 0.0"]
