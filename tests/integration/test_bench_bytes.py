"""bench pipeline's bytes per event: every record of a topic read back to its end, counted."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kafka import KafkaProducer

from stream.devtools.bench_pipeline import bytes_published
from stream.kafka.admin import ensure_topics
from stream.settings import Settings
from stream.topics import topics_for

pytestmark = pytest.mark.integration


def test_bytes_published_counts_keys_and_values_of_every_record(
        settings_factory: Callable[..., Settings]) -> None:
    s = settings_factory()
    ensure_topics(s)
    t = topics_for(s)
    producer = KafkaProducer(**s.kafka_python_config())
    for n in range(300):  # every partition, records of several sizes
        producer.send(t.recommendations.name, key=f"user-{n}".encode(), value=b"x" * (n % 7 + 1))
    producer.send(t.decisions.name, key=None, value=b"y" * 1000)
    producer.flush()
    producer.close()
    want_recs = sum(len(f"user-{n}") + n % 7 + 1 for n in range(300))
    got = bytes_published(s, [t.recommendations.name, t.decisions.name, t.risk_alerts.name])
    assert got == {t.recommendations.name: want_recs, t.decisions.name: 1000,
                   t.risk_alerts.name: 0}
