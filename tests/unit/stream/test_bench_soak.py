"""The soak benchmark's arithmetic: RSS growth after warm-up, worst lag and p99."""

import os

from stream.devtools.bench_soak import rss_mb, summarise


def sample(minute: int, rss: float | None, lag: int, p99: float | None) -> dict[str, object]:
    return {"minute": minute, "rss_mb": rss, "lag": lag, "p99_ms": p99}


def test_growth_is_measured_after_the_warm_up() -> None:
    samples = [sample(1, 100.0, 5, 40.0), sample(2, 180.0, 0, 45.0), sample(3, 200.0, 3, 90.0),
               sample(4, 205.0, 1, 50.0), sample(5, 210.0, 2, None)]
    out = summarise(samples, warmup=2)
    assert out["rss_growth_after_warmup_pct"] == 5.0  # 200 -> 210; minutes 1-2 ignored
    assert out["max_lag"] == 5
    assert out["final_lag"] == 2
    assert out["worst_minute_p99_ms"] == 90.0


def test_too_short_a_run_has_no_growth_figure() -> None:
    out = summarise([sample(1, 100.0, 0, None), sample(2, 120.0, 0, None)], warmup=2)
    assert out["rss_growth_after_warmup_pct"] is None
    assert out["worst_minute_p99_ms"] is None


def test_rss_of_this_process_is_read_from_proc() -> None:
    mb = rss_mb(os.getpid())
    assert mb is not None and mb > 1.0
    assert rss_mb(2**22 + 12345) is None  # no such process


def test_minutes_whose_health_was_not_ok_are_listed() -> None:
    samples = [{**sample(m, 100.0, 0, 10.0), "health": h}
               for m, h in [(1, "ok"), (2, "stalled"), (3, "ok"), (4, "unreachable")]]
    assert summarise(samples, warmup=2)["minutes_not_ok"] == [2, 4]
