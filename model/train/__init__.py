"""Offline training and evaluation: temporal splits, trainers, metrics, publishing."""

__all__ = [
    "data",
    "evaluate",
    "metrics",
    "neural",
    "online",
    "pipeline",
    "plot",
    "progress",
    "risk",
    "risk_data",
    "risk_online",
]
