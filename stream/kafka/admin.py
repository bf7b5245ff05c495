"""Cluster facts and topic setup: create lamstream's topics, list topics, end offsets, lag."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from stream.errors import InfraError
from stream.settings import Settings
from stream.topics import topics_for

log = logging.getLogger(__name__)

_TOPIC_ALREADY_EXISTS = 36


class _AdminClient(KafkaAdminClient):  # type: ignore[misc]
    """kafka-python's admin client, minus ACL decoding in DescribeGroups answers.

    kafka-python 3.0 always asks DescribeGroups for the authorized operations and decodes
    them into an enum; tansu answers with an operation bit (15) the enum lacks, and the whole
    call raised ValueError. lamstream reads no ACLs, so the field is dropped instead."""

    def _process_acl_operations(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.pop("authorized_operations", None)
        return obj


@contextmanager
def admin_client(settings: Settings, **config: Any) -> Iterator[KafkaAdminClient]:
    """A kafka-python admin client with the settings' TLS/SASL (and `config`, kafka-python's
    options); InfraError when the cluster cannot be reached."""
    try:
        admin = _AdminClient(**settings.kafka_python_config(), client_id="lamstream-admin",
                             **config)
    except KafkaError as exc:
        raise InfraError(f"cannot reach Kafka at {settings.bootstrap}: {exc}") from None
    try:
        yield admin
    finally:
        admin.close()


def _probe_consumer(settings: Settings) -> KafkaConsumer:
    return KafkaConsumer(
        **settings.kafka_python_config(), client_id="lamstream-offsets",
        enable_auto_commit=False, fetch_max_wait_ms=100)


def _describe_partitions(admin: KafkaAdminClient, names: list[str]) -> dict[str, int]:
    if not names:
        return {}
    return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(names)
            if t.get("error_code", 0) == 0}


def list_topics(settings: Settings) -> dict[str, int]:
    """Every non-internal topic on the cluster with its partition count, sorted by name."""
    with admin_client(settings) as admin:
        try:
            names = [n for n in admin.list_topics() if not n.startswith("__")]
            return dict(sorted(_describe_partitions(admin, names).items()))
        except KafkaError as exc:
            raise InfraError(f"cannot list topics on {settings.bootstrap}: {exc}") from None


def ensure_topics(settings: Settings, *, timeout: float = 30.0) -> list[str]:
    """Create every lamstream topic that is missing; returns the names created by this call.

    Existing topics are left as they are. One with fewer partitions than `settings.partitions`
    is logged as a warning, not fixed: adding partitions moves keys between partitions and so
    between worker table shards, which an operator must decide on.
    """
    specs = topics_for(settings).all()
    with admin_client(settings) as admin:
        try:
            existing = set(admin.list_topics())
            have = _describe_partitions(admin, [s.name for s in specs if s.name in existing])
            for spec in specs:
                if spec.name in have and have[spec.name] < spec.partitions:
                    log.warning(
                        "topic %s has %d partitions, settings want %d; left as is (adding "
                        "partitions re-shards keys: do it on purpose, e.g. kafka-topics "
                        "--alter)", spec.name, have[spec.name], spec.partitions)
            wanted: dict[str, Any] = {}
            for spec in specs:
                if spec.name in existing:
                    continue
                options: dict[str, Any] = {"num_partitions": spec.partitions,
                                           "replication_factor": settings.replication_factor}
                if spec.compacted:
                    options["configs"] = {"cleanup.policy": "compact"}
                wanted[spec.name] = options
            if not wanted:
                return []
            resp = admin.create_topics(wanted, timeout_ms=int(timeout * 1000),
                                       raise_errors=False)
            created: list[str] = []
            failed: list[str] = []
            for result in resp.get("topics", []):
                code = result.get("error_code", 0)
                if code == 0:
                    created.append(result["name"])
                elif code != _TOPIC_ALREADY_EXISTS:  # another process won the race: fine
                    failed.append(f"{result['name']}: {result.get('error_message') or code}")
            if failed:
                raise InfraError("could not create topics: " + "; ".join(failed))
            if created:
                admin.wait_for_topics(created, timeout_ms=int(timeout * 1000))
                log.info("created topics %s", ", ".join(created))
            return created
        except KafkaError as exc:
            raise InfraError(f"cannot create topics on {settings.bootstrap}: {exc}") from None


def _partitions(consumer: KafkaConsumer, topic: str, timeout: float) -> list[TopicPartition]:
    deadline = time.monotonic() + timeout
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        if time.monotonic() >= deadline:
            raise InfraError(f"topic {topic!r} does not exist (lamstream topics creates it)")
        time.sleep(0.1)


def seek_to_end(consumer: KafkaConsumer, partitions: Iterable[TopicPartition],
                timeout: float = 5.0) -> dict[TopicPartition, int]:
    """Position an assigned consumer at the true end of each partition and return the offsets.

    Why not just seek_to_end: tansu answers ListOffsets "latest" with the base offset of the
    last record batch + 1, so the last batch (often hundreds of records) lies beyond it. Here
    we seek to the reported end, then read forward until every partition has answered once
    (one fetch returns the whole rest of that batch) or fetches come back empty; the records
    read are dropped. Against a real Kafka the reported end is exact and this costs two empty
    polls (~0.2-0.4 s).
    """
    tps = list(partitions)
    consumer.seek_to_end(*tps)
    ends = {tp: consumer.position(tp) for tp in tps}
    pending = set(tps)
    deadline = time.monotonic() + timeout
    empty = 0
    while pending and empty < 2 and time.monotonic() < deadline:
        # Two empty polls in a row, not one: the first may end before the first fetch does.
        batch = consumer.poll(timeout_ms=200, max_records=1_000_000)  # a whole fetch at once
        empty = 0 if batch else empty + 1
        for tp, records in batch.items():
            if records:
                ends[tp] = max(ends[tp], records[-1].offset + 1)
                pending.discard(tp)
                consumer.pause(tp)
    for tp in tps:
        consumer.seek(tp, ends[tp])
    consumer.resume(*tps)
    return ends


def end_offsets(settings: Settings, topic: str, *, timeout: float = 10.0) -> dict[int, int]:
    """{partition: offset of the next record to be written}, exact also on tansu."""
    consumer = _probe_consumer(settings)
    try:
        tps = _partitions(consumer, topic, timeout)
        consumer.assign(tps)
        return {tp.partition: off for tp, off in seek_to_end(consumer, tps).items()}
    except KafkaError as exc:
        raise InfraError(f"cannot read end offsets of {topic!r}: {exc}") from None
    finally:
        consumer.close()


def consumer_lag(settings: Settings, group_id: str, topic: str, *,
                 timeout: float = 10.0) -> dict[int, int]:
    """{partition: records not yet committed by `group_id`} for `topic`.

    A partition the group has never committed counts from the partition's beginning (what a
    consumer with auto_offset_reset=earliest still has to read). End offsets come from
    end_offsets(), which corrects tansu's under-reported "latest".
    """
    consumer = _probe_consumer(settings)
    try:
        tps = _partitions(consumer, topic, timeout)
        beginnings = consumer.beginning_offsets(tps)
        consumer.assign(tps)
        ends = seek_to_end(consumer, tps)
    except KafkaError as exc:
        raise InfraError(f"cannot read offsets of {topic!r}: {exc}") from None
    finally:
        consumer.close()
    with admin_client(settings) as admin:
        try:
            committed = admin.list_group_offsets({group_id: tps}).get(group_id, {})
        except KafkaError as exc:
            raise InfraError(f"cannot read offsets of group {group_id!r}: {exc}") from None
    lag: dict[int, int] = {}
    for tp in tps:
        meta = committed.get(tp)
        done = meta.offset if meta is not None and meta.offset >= 0 else beginnings[tp]
        lag[tp.partition] = max(0, ends[tp] - done)
    return lag


def cluster_id(settings: Settings) -> str | None:
    """The cluster's id as the broker reports it (None from a broker that names none)."""
    with admin_client(settings) as admin:
        try:
            cid = admin.describe_cluster().get("cluster_id")
        except KafkaError as exc:
            raise InfraError(f"cannot describe the cluster at {settings.bootstrap}: "
                             f"{exc}") from None
    return str(cid) if cid else None
