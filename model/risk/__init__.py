"""Risk models on prediction contexts, and their overlay beside a recommender."""

__all__ = [
    "model",
    "overlay",
]
