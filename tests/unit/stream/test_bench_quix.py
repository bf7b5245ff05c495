"""bench quix without a network: the venv and peer commands, the rate, the exact counts."""

from __future__ import annotations

import ast
import stat
from pathlib import Path

import orjson
import pytest

from stream.devtools import bench_quix
from stream.devtools.bench_quix import (
    busy_rate,
    ensure_venv,
    exact,
    expected_recommendations,
    installed_version,
    peer_command,
    venv_commands,
)
from stream.errors import InfraError
from stream.settings import Settings

REPO = Path(__file__).resolve().parents[3]


def test_the_venv_is_made_with_python3_and_the_pinned_quixstreams(tmp_path: Path) -> None:
    venv = tmp_path / "vq"
    assert venv_commands(venv, "3.28.1") == [
        ["python3", "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "quixstreams==3.28.1"]]
    assert bench_quix.QUIX_VERSION.count(".") == 2


def test_the_peer_runs_from_the_venv_with_its_usage_line(tmp_path: Path) -> None:
    cmd = peer_command(tmp_path / "py", "h:9092", "in", "out", "g", tmp_path / "st", 5)
    assert cmd == [str(tmp_path / "py"), str(bench_quix.PEER), "h:9092", "in", "out", "g",
                   str(tmp_path / "st"), "5"]
    assert "BOOTSTRAP INPUT_TOPIC OUTPUT_TOPIC GROUP STATE_DIR N" in bench_quix.PEER.read_text()


def fake_python(path: Path, version: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {version}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_an_installed_venv_of_the_right_version_is_reused(tmp_path: Path) -> None:
    assert installed_version(tmp_path / "none" / "bin" / "python") is None
    python = fake_python(tmp_path / "vq" / "bin" / "python", "3.28.1")
    assert installed_version(python) == "3.28.1"
    said: list[str] = []
    assert ensure_venv(tmp_path / "vq", "3.28.1", said.append) == python
    assert said == []  # nothing installed


def test_a_failed_install_is_one_clear_error(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_quix, "venv_commands", lambda venv, version: [["false"]])
    with pytest.raises(InfraError, match="false failed"):
        ensure_venv(tmp_path / "vq", "3.28.1", lambda _: None)


def test_the_rate_is_events_over_the_busy_span() -> None:
    assert busy_rate([10.0, 10.5, 12.0], 1000) == 500.0
    with pytest.raises(InfraError):
        busy_rate([3.0, 3.0], 2)
    with pytest.raises(InfraError):
        busy_rate([], 0)


def test_exact_means_every_event_once() -> None:
    assert exact(["a", "b", "c"], 3)
    assert not exact(["a", "b"], 3)  # one lost
    assert not exact(["a", "b", "b", "c"], 3)  # one twice
    assert not exact(["a", "b", "c", "d"], 3)


def test_recommendations_expected_for_valid_distinct_views_and_clicks() -> None:
    def ev(i: int, type_: str, eid: str | None = None) -> tuple[bytes, bytes]:
        return b"u1", orjson.dumps({"event_id": eid or f"e{i}", "user_id": "u1",
                                    "type": type_, "item_id": "i1", "ts": 1_764_000_000_000})

    payloads = [ev(1, "view"), ev(2, "click"), ev(3, "purchase"), ev(4, "view", "e1"),
                (b"u1", b"not json")]
    s = Settings()
    assert set(s.recommend_on) == {"view", "click"}
    assert expected_recommendations(s, payloads) == 2


def test_no_lamstream_module_imports_the_quix_peer_or_quixstreams() -> None:
    for root in ("stream", "model"):
        for path in (REPO / root).rglob("*.py"):
            if path.name == "quix_peer.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                assert not [n for n in names if n.split(".")[0] == "quixstreams"
                            or "quix_peer" in n], path


def test_the_command_prints_both_figures_and_fails_on_an_inexact_count(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from stream.cli.main import app

    result = {"quix_eps": 30000.0, "lamstream_eps": 6000.0, "ratio_vs_quix": 0.2,
              "quix_exact": True, "lamstream_exact": True}
    monkeypatch.setattr(bench_quix, "run_quix_bench", lambda *a, **k: dict(result))
    r = CliRunner().invoke(app, ["bench", "quix", "--events", "10", "--json"])
    assert r.exit_code == 0 and orjson.loads(r.stdout)["ratio_vs_quix"] == 0.2
    result["lamstream_exact"] = False
    r = CliRunner().invoke(app, ["bench", "quix", "--events", "10", "--json"])
    assert r.exit_code == 1 and "not exact" in r.output
