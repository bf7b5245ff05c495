"""The feedback-join process: delayed rewards, risk labels, privacy, feedback I/O."""

__all__ = [
    "app",
    "risk_labels",
    "privacy",
    "source",
    "stats_export",
]
