"""The worker process: Faust app, ingest loop and its batch steps, model updates, web, dashboard."""

__all__ = [
    "app",
    "types",
    "ingest",
    "steps",
    "holder",
    "recent",
    "model_updates",
    "web",
    "reports",
    "routing",
    "metrics",
    "exploration",
    "custom",
]
