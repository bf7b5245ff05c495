"""Real event files replayed into a topic: the default file, pacing, and benchmark payloads."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import orjson

from model.datasets import iter_payloads
from stream.errors import UsageError
from stream.settings import Settings

T = TypeVar("T")

_SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
_DEFAULT_DATA = _SHARED / "taobao" / "UserBehavior-timesorted-96k.csv"
_SAMPLE = Path(__file__).resolve().parents[1] / "sample" / "events.jsonl"


def default_data() -> Path:
    """The Taobao stream in ../shared/data when it is there, else the bundled sample."""
    return _DEFAULT_DATA if _DEFAULT_DATA.exists() else _SAMPLE


def paced(items: Iterable[T], rate: float, limit: int = 0) -> Iterator[T]:
    """`items` at `rate` per second (0: as fast as possible), at most `limit` (0: all)."""
    t0 = time.monotonic()
    for n, item in enumerate(items, 1):
        yield item
        if limit and n >= limit:
            return
        if rate > 0:
            ahead = n / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)


def load_payloads(data: str | None, n: int) -> list[tuple[bytes, bytes]]:
    """`n` keyed events from `data` (default_data()), the file replayed as often as needed."""
    out: list[tuple[bytes, bytes]] = []
    path = data or str(default_data())
    while len(out) < n:
        before = len(out)
        for key, value in iter_payloads(path):
            if key is None:
                continue
            # a fresh id per copy so a file shorter than n is replayed as new events
            ev = orjson.loads(value)
            ev["event_id"] = f"{ev['event_id']}#{len(out)}"
            out.append((key.encode(), orjson.dumps(ev)))
            if len(out) >= n:
                break
        if len(out) == before:
            raise UsageError(f"no usable events in {path}")
    return out


def preload(settings: Settings, topic: str, payloads: list[tuple[bytes, bytes]]) -> None:
    """Write `payloads` to `topic` as fast as the broker takes them, before a measured run."""
    from kafka import KafkaProducer

    producer = KafkaProducer(**settings.kafka_python_config(), linger_ms=20,
                             batch_size=256 * 1024, acks=1)
    for key, value in payloads:
        producer.send(topic, key=key, value=value)
    producer.flush(120)
    producer.close()
