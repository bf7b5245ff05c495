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
import functools
from typing import Any

from faust.types import TP
from kafka import KafkaConsumer, TopicPartition

from stream.kafka.admin import seek_to_end
from stream.kafka.faust_patches import raise_recovery_highwaters
from stream.settings import Settings


def true_ends(settings: Settings, tps: list[TP]) -> dict[TP, int]:
    """{tp: offset of the next record to be written}, read forward past tansu's answer."""
    consumer = KafkaConsumer(**settings.kafka_python_config(), enable_auto_commit=False)
    try:
        parts = [TopicPartition(tp.topic, tp.partition) for tp in tps]
        consumer.assign(parts)
        ends = seek_to_end(consumer, parts)
        return {TP(tp.topic, tp.partition): end for tp, end in ends.items()}
    finally:
        consumer.close()


async def _true_ends_off_loop(settings: Settings, tps: list[TP]) -> dict[TP, int]:
    return await asyncio.get_running_loop().run_in_executor(None, true_ends, settings, tps)


def install_exact_highwaters(app: Any, settings: Settings) -> None:
    """Make this app's table recovery use the true end of each changelog partition."""
    raise_recovery_highwaters(app, functools.partial(_true_ends_off_loop, settings))
