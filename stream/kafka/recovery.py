"""Exact changelog highwaters for Faust's table recovery, also on brokers that under-report them.

After a rebalance Faust recovers each table partition a worker now owns by reading its changelog
up to the highwater that ListOffsets "latest" reports, and refuses to start (ConsistencyError:
"persisted offset ... is higher than the last offset in that topic") when the worker's RocksDB
already holds a later offset. tansu answers "latest" with the base offset of the partition's last
record batch + 1, and the ingest agent writes changelog records in batches, so a worker that got
back a partition it had owned crashed, and one taking over a partition could stop recovering
before the last batch (losing the state of events whose offsets are already committed). Here the
reported highwaters are raised to the true end, found by reading forward from the reported one
(stream.kafka.admin.seek_to_end). On Apache Kafka they are already exact; the check then costs two
empty polls per rebalance.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import Counter
from typing import Any

from faust.tables.recovery import Recovery
from faust.types import TP

from stream.settings import Settings

log = logging.getLogger(__name__)

_SETTINGS: weakref.WeakKeyDictionary[Any, Settings] = weakref.WeakKeyDictionary()
_ORIGINAL = Recovery._build_highwaters


def true_ends(settings: Settings, tps: list[TP]) -> dict[TP, int]:
    """{tp: offset of the next record to be written}, read forward past tansu's answer."""
    from kafka import KafkaConsumer, TopicPartition

    from stream.kafka.admin import seek_to_end

    consumer = KafkaConsumer(**settings.kafka_python_config(), enable_auto_commit=False)
    try:
        parts = [TopicPartition(tp.topic, tp.partition) for tp in tps]
        consumer.assign(parts)
        ends = seek_to_end(consumer, parts)
        return {TP(tp.topic, tp.partition): end for tp, end in ends.items()}
    finally:
        consumer.close()


async def _build_highwaters(self: Recovery, consumer: Any, tps: set[TP],
                            destination: Counter[TP], title: str) -> None:
    await _ORIGINAL(self, consumer, tps, destination, title)
    settings = _SETTINGS.get(self.app)
    if settings is None or not tps:
        return
    ends = await asyncio.get_running_loop().run_in_executor(
        None, true_ends, settings, sorted(tps))
    for tp, end in ends.items():
        # Faust keeps "highwater" as the offset of the last record (end - 1)
        if end - 1 > destination.get(tp, -1):
            log.info("changelog %s:%d ends at %d, the broker reported %d", tp.topic,
                     tp.partition, end, destination.get(tp, -1) + 1)
            destination[tp] = end - 1


def install_exact_highwaters(app: Any, settings: Settings) -> None:
    """Make this app's table recovery use the true end of each changelog partition."""
    _SETTINGS[app] = settings
    Recovery._build_highwaters = _build_highwaters  # type: ignore[method-assign]
