"""Tools around the service, not the service: demo, simulator, benchmarks."""

__all__ = [
    "demo",
    "simulate",
    "sim_world",
    "bench_pipeline",
    "bench_floor",
    "bench_naive",
    "bench_scale",
]
