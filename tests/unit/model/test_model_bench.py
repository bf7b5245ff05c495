"""The inference benchmark: JSON shape, the model asked for, a ratio from the same run."""

from __future__ import annotations

import pytest

from model.bench import run_inference_bench


@pytest.mark.parametrize("kind", ["gru", "sasrec", "hybrid"])
def test_bench_reports_the_requested_model_with_a_same_run_baseline(kind: str) -> None:
    out = run_inference_bench(None, device="cpu", seconds=0.3, prefer=kind, concurrency=(1, 8))
    assert out["model"] == out["method"] == kind and out["device"] == "cpu"
    assert out["candidates"] > 0  # items scored per event
    # the served model's per-event rate is held to the SASRec path's, measured alongside
    assert ("sasrec_per_event_pps" in out) == (kind != "sasrec")
    for key in ("per_event_pps", "batched_pps", "ratio", "p99_ms", "p50_ms"):
        assert out[key] > 0, key
    # the baseline is the faster of the two per-event runs, so the ratio is conservative
    assert out["per_event_pps"] == max(out["per_event_runs_pps"])
    assert out["ratio"] == pytest.approx(out["batched_pps"] / out["per_event_pps"], rel=0.01)
    assert [lv["concurrency"] for lv in out["levels"]] == [1, 8]
    assert sum(out["batcher"]["batch_size_hist"].values()) > 0
    # the ceiling: full max_batch batches with no queue, against the same baseline
    assert out["direct_batch_pps"] > 0
    assert out["ceiling_ratio"] == pytest.approx(
        out["direct_batch_pps"] / out["per_event_pps"], rel=0.01)
