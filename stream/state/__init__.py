"""Pure per-user state: rolling features and the reward and risk-label join state."""

__all__ = [
    "features",
    "rewards",
    "labels",
]
