"""A subscriber's bookkeeping of what it handed out: what commit() commits, what seek() names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from stream.client.codec import ConsumerRecord
from stream.errors import ClientError


class Partition(NamedTuple):
    """(topic, partition): equal to kafka-python's and aiokafka's TopicPartition, which are
    named tuples of the same two fields."""

    topic: str
    partition: int


class HandedOut:
    """The next offset to commit per partition: one past the last record handed out."""

    def __init__(self) -> None:
        self.next: dict[Partition, int] = {}

    def mark(self, topic: str, partition: int, offset: int) -> None:
        self.next[Partition(topic, partition)] = offset + 1

    def to_commit(self, record: ConsumerRecord | None) -> dict[Partition, int]:
        """What commit(record) commits: that record's partition up to it, else everything."""
        if record is not None:
            return {Partition(record.topic, record.partition): record.offset + 1}
        return dict(self.next)

    def committed(self, offsets: dict[Partition, int]) -> None:
        for tp, off in offsets.items():
            if self.next.get(tp, -1) <= off:
                self.next.pop(tp, None)

    def forget(self, tp: Partition | None = None) -> None:
        """After a seek (one partition) or a failed commit (all): nothing to commit there."""
        if tp is None:
            self.next.clear()
        else:
            self.next.pop(tp, None)


def seek_target(topics: Sequence[str], partition: int | tuple[str, int], topic: str | None,
                offset: int, assigned: set[Partition]) -> Partition:
    """The partition `seek(partition, offset, topic=...)` means, checked: given as a
    (topic, partition) pair, or a number of `topic` (default: the one topic read)."""
    if isinstance(partition, tuple):
        tp = Partition(*partition)
    else:
        if topic is None:
            if len(topics) != 1:
                raise ClientError("seek(partition, offset, topic=...) needs the topic: this "
                                  f"subscriber reads {', '.join(topics)}")
            topic = topics[0]
        tp = Partition(topic, partition)
    if tp not in assigned:
        raise ClientError(f"{tp.topic}[{tp.partition}] is not assigned to this subscriber "
                          "(in a group, poll until assignment() holds it)")
    if offset < 0:
        raise ClientError(f"offset must be >= 0, got {offset}")
    return tp
