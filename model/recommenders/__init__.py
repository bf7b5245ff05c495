"""The Recommender seam and its implementations (neighbours, nets, baseline)."""

__all__ = [
    "base",
    "neighbors",
    "neural",
    "baseline",
    "loading",
]
