"""`lamstream doctor` on the embedded broker: a healthy stack, then each fault named with a fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from typer.testing import CliRunner, Result

from stream.cli.main import app
from stream.devtools.procs import start_worker, stop_worker, wait_healthy
from stream.kafka.admin import ensure_topics
from stream.settings import Settings
from tests.helpers import poll_until

pytestmark = pytest.mark.integration


def doctor(s: Settings, *args: str) -> Result:
    """`lamstream doctor` with the environment a shell of this deployment would have."""
    env = {"LAMSTREAM_BOOTSTRAP_SERVERS": s.bootstrap, "LAMSTREAM_TOPIC_PREFIX": s.topic_prefix,
           "LAMSTREAM_APP_ID": s.app_id, "LAMSTREAM_PARTITIONS": str(s.partitions),
           "LAMSTREAM_DATA_DIR": str(s.data_dir), "LAMSTREAM_WEB_PORT": str(s.web_port)}
    return CliRunner().invoke(app, ["doctor", *args], env=env)


def findings(result: Result) -> dict[str, list[dict[str, Any]]]:
    report = orjson.loads(result.stdout)
    out: dict[str, list[dict[str, Any]]] = {}
    for f in report["findings"]:
        out.setdefault(f["status"], []).append(f)
    return out


def test_a_healthy_stack_passes_then_a_deleted_topic_and_a_stopped_worker_are_named(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    s = settings_factory()
    ensure_topics(s)
    log = tmp_path / "w.log"
    proc = start_worker(s, s.data_dir, log)
    url = f"http://127.0.0.1:{s.web_port}"
    try:
        wait_healthy(url, proc, 90, log)
        ok = doctor(s)
        assert ok.exit_code == 0, ok.output
        assert "0 problem(s)" in ok.stdout and "co-partitioning" in ok.stdout
        report = orjson.loads(doctor(s, "--json").stdout)
        assert report["ok"] and set(report["versions"]) >= {
            "lamstream", "faust-streaming", "torch", "broker"}
        assert all(t["present"] and t["partitions"] >= 1 and t["replication"] == 1
                   for t in report["topics"])
        assert report["groups"]["worker"]["members"]
        assert set(report["lag"][s.app_id]) == {f"{s.topic_prefix}events"}
        assert report["workers"][0]["model_version"] and report["workers"][0]["settings"][
            "topic_prefix"] == s.topic_prefix

        admin = KafkaAdminClient(bootstrap_servers=s.bootstrap)
        admin.delete_topics([f"{s.topic_prefix}risk-labels"])
        admin.close()
        gone = poll_until(lambda: (r := doctor(s)).exit_code == 1 and r, timeout=30,
                          message="doctor sees the deleted topic")
        assert f"missing: {s.topic_prefix}risk-labels" in gone.stdout
        assert "fix: lamstream topics create" in gone.stdout
    finally:
        stop_worker(proc)
    stopped = doctor(s, "--worker", url)
    assert stopped.exit_code == 1
    assert f"no worker answers at {url}" in stopped.stdout
    assert "fix: start it: lamstream worker" in stopped.stdout


def test_events_with_fewer_partitions_than_the_outputs_are_named_with_the_fix(
        settings_factory: Callable[..., Settings]) -> None:
    s = settings_factory(partitions=4)
    events = f"{s.topic_prefix}events"
    admin = KafkaAdminClient(bootstrap_servers=s.bootstrap)
    admin.create_topics([NewTopic(events, num_partitions=2, replication_factor=1)])
    admin.close()
    ensure_topics(s)  # the rest with 4
    result = doctor(s, "--json")
    assert result.exit_code == 1
    (problem,) = [f for f in findings(result)["problem"] if f["check"] == "co-partitioning"]
    assert f"{events} has 2 partitions but {s.topic_prefix}recommendations has 4" in \
        problem["message"]
    assert f"--alter --topic {events} --partitions 4" in problem["fix"]
    assert "recommendations --partitions" not in problem["fix"]  # only the smaller side grows
