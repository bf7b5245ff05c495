"""The trainer process: feedback in, gated model versions out."""

__all__ = [
    "loop",
]
