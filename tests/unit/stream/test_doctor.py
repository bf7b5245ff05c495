"""`lamstream doctor`'s verdicts from what it sees (no broker): each problem with its fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from stream.cli.main import app
from stream.doctor import (
    Report,
    _check_copartitioning,
    _check_versions,
    _check_worker,
    check_groups,
    check_registry,
    diagnose,
)
from stream.settings import Settings


def _settings(**kw: Any) -> Settings:
    return Settings(bootstrap_servers="127.0.0.1:1", topic_prefix="p.", app_id="app", **kw)


def _report() -> Report:
    return Report(bootstrap="127.0.0.1:1", versions={})


def test_a_worker_with_other_settings_is_a_problem_naming_the_variables() -> None:
    r = _report()
    health = {"status": "ok", "model": "m", "model_version": "v1", "assignment": [],
              "settings": {"app_id": "app", "topic_prefix": "q.", "partitions": 8}}
    _check_worker("http://w:6066", 200, health, _settings().shared(), r)
    (f,) = [f for f in r.findings if f.status == "problem"]
    assert f.check == "settings" and "LAMSTREAM_TOPIC_PREFIX='q.'" in f.message
    assert "'p.'" in f.message and f.fix and "same settings" in f.fix


def test_a_starting_worker_is_a_warning_not_a_problem() -> None:
    r = _report()
    _check_worker("http://w:6066", 503, {"status": "starting", "ingest": "starting"},
                  _settings().shared(), r)
    assert [f.status for f in r.findings] == ["warning"] and r.ok


def test_workers_on_different_versions_or_behind_the_registry_are_named() -> None:
    r = _report()
    r.workers = [{"url": "a", "up": True, "model_version": "v2+rerank-v1"},
                 {"url": "b", "up": True, "model_version": "v3"}]
    r.registry = {"models": {"recommender": {"latest": "v3"}}}
    _check_versions(_settings(), r)
    messages = [f.message for f in r.findings]
    assert any("different versions" in m for m in messages)
    assert any(m.startswith("a not serving the registry's latest recommender v3")
               for m in messages)
    assert all((f.fix or "").startswith("lamstream model announce recommender")
               for f in r.findings)
    mine = _report()
    mine.workers, mine.registry = r.workers[1:], r.registry
    _check_versions(_settings(predictor="pkg.mod:make"), mine)  # a user's model: no registry
    assert not mine.findings


def test_copartitioning_names_the_smaller_side_and_the_alter_command() -> None:
    s = _settings()
    seen = {f"p.{t}": {"partitions": n, "replication": 1} for t, n in (
        ("events", 8), ("recommendations", 4), ("risk-alerts", 8), ("decisions", 8))}
    r = _report()
    _check_copartitioning(s, seen, r)
    (f,) = r.findings
    assert f.status == "problem" and "p.recommendations has 4" in f.message
    assert f.fix and "--alter --topic p.recommendations --partitions 8" in f.fix
    assert "--topic p.events" not in f.fix


class _Admin:
    def __init__(self, groups: dict[str, Any]) -> None:
        self.groups = groups

    def describe_groups(self, ids: list[str]) -> dict[str, Any]:
        return {g: self.groups.get(g, {"group_state": "Empty", "members": []}) for g in ids}


def test_groups_rebalancing_or_without_a_worker_are_named() -> None:
    r = _report()
    check_groups(_Admin({"app-feedback": {"group_state": "PreparingRebalance",
                                          "members": [{"client_id": "f1"}]}}), _settings(), r)
    (problem,) = [f for f in r.findings if f.status == "problem"]
    assert problem.message.startswith("app: no worker") and \
        problem.fix == "start one: lamstream worker"
    warnings = [f.message for f in r.findings if f.status == "warning"]
    assert any("app-feedback (feedback) is rebalancing" in m for m in warnings)
    assert r.groups["feedback"]["members"] == ["f1"]


def test_the_registry_is_listed(tmp_path: Path) -> None:
    from model.registry import ModelRegistry

    reg = ModelRegistry(tmp_path)
    reg.publish("risk", lambda d: (d / "w").write_text("x"))
    r = _report()
    check_registry(_settings(data_dir=tmp_path), r)
    assert r.registry["models"]["risk"] == {"versions": ["v1"], "latest": "v1"}
    assert "risk v1 (latest v1)" in r.findings[0].message


def test_an_unreachable_broker_is_one_problem_with_the_fix_and_exit_1(tmp_path: Path) -> None:
    r = diagnose(_settings(data_dir=tmp_path), ["http://127.0.0.1:1"], timeout=1.0)
    (broker,) = [f for f in r.findings if f.check == "broker"]
    assert broker.status == "problem" and "cannot reach Kafka at 127.0.0.1:1" in broker.message
    assert broker.fix and "LAMSTREAM_BOOTSTRAP_SERVERS" in broker.fix
    assert not r.ok and r.versions["lamstream"]
    result = CliRunner().invoke(app, ["doctor", "--timeout", "1", "--worker",
                                      "http://127.0.0.1:1"],
                                env={"LAMSTREAM_BOOTSTRAP_SERVERS": "127.0.0.1:1",
                                     "LAMSTREAM_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 1 and "PROBLEM  broker" in result.stdout


def test_version_prints_the_package_version() -> None:
    import importlib.metadata

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"lamstream {importlib.metadata.version('lamstream')}"
