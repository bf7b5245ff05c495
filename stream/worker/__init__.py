"""The worker process: Faust app, ingest loop, model updates, web views, dashboard."""

__all__ = [
    "app",
    "ingest",
    "model_updates",
    "web",
    "routing",
    "metrics",
    "exploration",
    "decision_log",
]
