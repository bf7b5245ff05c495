"""`lamstream simulate` end to end on a tiny world: real worker, join and trainer processes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from stream.devtools.simulate import SimConfig, simulate
from stream.settings import Settings

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "stream" / "sample" / "events.jsonl"


def test_simulate_runs_the_closed_loop_and_saves_curve_and_feedback(
        settings_factory: Callable[..., Settings], tmp_path: Path) -> None:
    s = settings_factory()
    cfg = SimConfig(data=SAMPLE, users=25, rounds=6, windows=2, arms=("learning",),
                    round_timeout_s=30.0, keep_up_timeout_s=5.0)
    png = tmp_path / "curve.png"
    lines: list[str] = []
    out = simulate(cfg, s, tmp_path / "sim", png, lines.append)
    arm = out["arms"]["learning"]
    assert len(arm["window_reward"]) == 2 and len(arm["explored_fraction"]) == 2
    assert arm["missing_recommendations"] == 0
    assert arm["recommendations"] >= 25 * 6 * 0.5  # add_to_cart / purchase get none
    assert out["first_window_reward"] == arm["window_reward"][0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the logged feedback is what `lamstream evaluate policy` reads: no raw user ids
    rows = [orjson.loads(x) for x in Path(arm["feedback_file"]).read_bytes().splitlines()]
    assert rows and all("user_id" not in r and r["user_key"] for r in rows)
    assert not any(r["user_key"].startswith("sim-") for r in rows)
