"""Test helpers: poll until a condition holds, settings for one test's topics."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from stream.kafka.broker import free_port
from stream.settings import Settings

T = TypeVar("T")


def poll_until(fn: Callable[[], T], timeout: float = 10.0, interval: float = 0.05,
               message: str | None = None) -> T:
    """Call fn until it returns something truthy, and return that; AssertionError at timeout.

    For waiting on a broker or a worker without sleeping a guessed amount of time.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message or getattr(fn, "__name__", "condition")
            raise AssertionError(f"{what} not met within {timeout}s (last value: {value!r})")
        time.sleep(interval)


def make_settings(bootstrap: str, prefix: str, tmp_path: Path, **overrides: Any) -> Settings:
    """Settings isolated to one test: its topic prefix, group id, state dir and web port.

    Unset fields still come from LAMSTREAM_* (so TLS/SASL for a real cluster apply).
    """
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "topic_prefix": prefix,
        "app_id": f"lamstream-{prefix.rstrip('.')}",
        "partitions": 4,
        "data_dir": tmp_path / "data",
        "store": "memory",
        "web_port": free_port(),
        # the feedback join's and the trainer's probes, when a test runs them in-process
        "feedback_web_port": free_port(),
        "trainer_web_port": free_port(),
    }
    values.update(overrides)
    return Settings(**values)
