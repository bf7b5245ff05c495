"""Per-user state: rolling features, the two joins and their shared skeleton, table access."""

__all__ = [
    "features",
    "rewards",
    "labels",
    "joins",
    "table",
]
