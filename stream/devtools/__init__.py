"""Tools around the service, not the service: demo, simulator, benchmarks, their processes."""

__all__ = [
    "bench_floor",
    "bench_naive",
    "bench_pipeline",
    "bench_scale",
    "bench_soak",
    "demo",
    "procs",
    "replay",
    "sim_report",
    "sim_world",
    "simulate",
]
