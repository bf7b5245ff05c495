"""Model CLI commands: one-line errors with exit code 1, registry list/rollback, JSON shape."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from model.registry import ModelRegistry
from stream.cli.model import evaluate_app, model_app, train_app

runner = CliRunner()


def test_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    r = runner.invoke(evaluate_app, ["recommender", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1
    assert "error: no --data and no trained recommender" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(train_app, ["risk", "--data", str(tmp_path / "missing.csv"),
                                  "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and "error:" in r.output and "Traceback" not in r.output


def test_evaluate_prints_stored_evaluation_and_registry_commands(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    evaluation = {"methods": {m: {"hr@20": 0.1, "mrr@20": 0.05, "ndcg@20": 0.07}
                              for m in ("popularity", "covisitation", "gru", "sasrec")},
                  "served": "gru", "split": {"kind": "temporal"}}
    for _ in range(2):
        reg.publish("recommender", lambda d: (d / "x").write_text("x"),
                    metadata={"evaluation": evaluation})
    r = runner.invoke(evaluate_app, ["recommender", "--data-dir", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["methods"] == evaluation["methods"] and out["served"] == "gru"
    assert out["source"] == "registry recommender v2"
    r = runner.invoke(model_app, ["list", "--data-dir", str(tmp_path)])
    assert "recommender: v1 v2*" in r.output
    r = runner.invoke(model_app, ["rollback", "recommender", "--no-announce", "--data-dir",
                                      str(tmp_path)])
    assert r.exit_code == 0 and reg.latest("recommender") == "v1"
    r = runner.invoke(model_app, ["rollback", "recommender", "--no-announce", "--data-dir",
                                      str(tmp_path)])
    assert r.exit_code == 1 and "oldest" in r.output


def test_announce_refuses_a_version_that_is_not_published(tmp_path: Path) -> None:
    r = runner.invoke(model_app, ["announce", "recommender", "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and "no published recommender" in r.output
    ModelRegistry(tmp_path).publish("recommender", lambda d: (d / "x").write_text("x"))
    r = runner.invoke(model_app, ["announce", "recommender", "--version", "v9",
                                  "--data-dir", str(tmp_path)])
    assert r.exit_code == 1 and "v9 not found" in r.output and "Traceback" not in r.output
