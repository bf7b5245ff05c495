"""Kafka and Faust plumbing: broker, admin, publishing, fast path, Faust patches."""

__all__ = [
    "admin",
    "broker",
    "publish",
    "fastpath",
    "recovery",
]
