"""Kafka and Faust plumbing: broker, admin, consumers, Faust app, publishing, fast path, patches."""

__all__ = [
    "admin",
    "consumers",
    "broker",
    "faust_app",
    "publish",
    "fastpath",
    "faust_patches",
    "recovery",
]
