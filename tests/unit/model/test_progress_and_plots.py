"""Progress with an ETA (a redrawn line on a terminal, plain lines elsewhere), HR@K curves
and their PNG, and `evaluate recommender --plot` keeping --json stdout clean."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from model.train.metrics import hit_curve
from model.train.plot import plot_hit_curves
from model.train.progress import Progress, duration, progress_line, step
from stream.cli.model import evaluate_app

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_say_done_total_elapsed_and_eta() -> None:
    assert [duration(s) for s in (0, 7.4, 65, 3725)] == ["0s", "7s", "1m05s", "1h02m"]
    assert progress_line("train", 3, 10, 12.0, "gru") == "train: 3/10 (30%) 12s, ETA 28s, gru"
    assert progress_line("train", 0, 10, 1.0) == "train: 0/10 (0%) 1s"  # no ETA from nothing
    assert progress_line("train", 10, 10, 40.0) == "train: 10/10 (100%) 40s"


def test_plain_lines_off_a_terminal_at_most_every_interval_and_at_the_end() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress("simulate", stream=out, tty=False, every_s=10, clock=clock)
    for i in range(1, 5):
        clock.now += 3
        p.update(i, 4)
    p("a message")
    assert out.getvalue().splitlines() == [
        "simulate: 1/4 (25%) 3s, ETA 9s",        # the first is written at once
        "simulate: 4/4 (100%) 12s",              # 2/4 and 3/4 fell within 10 s of it
        "a message"]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_one_redrawn_line_on_a_terminal_with_messages_above_it() -> None:
    out, clock = io.StringIO(), Clock()
    with Progress("train", stream=out, tty=True, clock=clock) as p:
        clock.now += 1
        p.update(1, 2, "gru")
        p("gru: hr@20 0.1")
        clock.now += 0.01
        p.update(1, 2, "ignored: too soon")
        clock.now += 1
        p.update(2, 2)
        p("done")
    text = out.getvalue()
    assert "ignored" not in text
    assert text == ("\r\x1b[Ktrain: 1/2 (50%) 1s, ETA 1s, gru"
                    "\r\x1b[Kgru: hr@20 0.1\n\r\x1b[Ktrain: 1/2 (50%) 1s, ETA 1s, gru"
                    "\r\x1b[Ktrain: 2/2 (100%) 2s\n"
                    "done\n")


def test_step_reaches_a_progress_and_leaves_plain_callbacks_alone() -> None:
    seen: list[str] = []
    step(seen.append, 1, 2)
    step(None, 1, 2)
    assert seen == []
    out = io.StringIO()
    step(Progress("x", stream=out, tty=False), 2, 2)
    assert out.getvalue() == "x: 2/2 (100%) 0s\n"


def test_hit_curve_by_hand_and_its_png(tmp_path: Path) -> None:
    ranked = [["a", "b", "c"], ["x", "y", "z"], ["q", "r", "t"], ["b", "a"]]
    curve = hit_curve(ranked, ["a", "z", "nope", "a"], 4)
    assert curve == pytest.approx([1 / 4, 2 / 4, 3 / 4, 3 / 4])
    png = plot_hit_curves({"covisitation": curve, "popularity": [0.0, 0.1, 0.2, 0.2]},
                          tmp_path / "sub" / "hr.png", served="covisitation")
    data = png.read_bytes()
    assert png == tmp_path / "sub" / "hr.png" and data.startswith(PNG_MAGIC)
    assert len(data) > 5000  # axes, two lines and a legend, not an empty canvas


def test_evaluate_recommender_plot_writes_a_png_and_keeps_json_on_stdout(
        tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(
        json.dumps({"event_id": f"e{u}-{j}", "user_id": f"u{u}", "type": "view",
                    "item_id": f"i{(u + j) % 25}", "ts": 1_000_000 * j + u})
        for u in range(40) for j in range(12)))
    png = tmp_path / "hr.png"
    r = CliRunner().invoke(evaluate_app, [
        "recommender", "--data", str(events), "--layout", "jsonl", "--epochs", "1",
        "--budget-s", "2", "--json", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)  # progress and notes went to stderr
    assert set(result["methods"]) >= {"popularity", "covisitation"}
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 5000
    assert "evaluate recommender: 6/6 (100%)" in r.stderr and f"wrote {png}" in r.stderr
    r = CliRunner().invoke(evaluate_app, ["recommender", "--data-dir", str(tmp_path),
                                          "--plot", str(png)])
    assert r.exit_code == 2 and "--plot needs --data" in r.output
