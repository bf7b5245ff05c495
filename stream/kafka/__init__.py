"""Kafka and Faust plumbing: broker, admin, the Faust app, publishing, fast path, Faust patches."""

__all__ = [
    "admin",
    "broker",
    "faust_app",
    "publish",
    "fastpath",
    "faust_patches",
    "recovery",
]
