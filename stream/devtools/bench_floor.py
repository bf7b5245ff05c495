"""The latency floor of `lamstream bench pipeline`: a bare passthrough in its own process.

It consumes the events topic and forwards every record unchanged to an output topic, with
the worker's consumer fetch wait and producer linger and nothing else (no validation, state,
model or decision). Measured by the same load generator and observer as the worker, its
end-to-end latency is what the broker, the clients and this machine cost before any
processing: the worker's latency is this floor plus its own work.

Run as `python -m stream.devtools.bench_floor BOOTSTRAP IN_TOPIC OUT_TOPIC FETCH_WAIT_MS`; prints
"ready" once its partitions are assigned, then forwards until it is terminated. Security
settings (SASL / TLS) come from the LAMSTREAM_* environment, as for the worker.
"""

from __future__ import annotations

import asyncio
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.settings import Settings, load_settings


async def passthrough(settings: Settings, in_topic: str, out_topic: str, fetch_wait_ms: int
                      ) -> None:
    consumer = AIOKafkaConsumer(**settings.aiokafka_config(), enable_auto_commit=False,
                                fetch_max_wait_ms=fetch_wait_ms, max_poll_records=1000)
    producer = AIOKafkaProducer(**settings.aiokafka_config(), linger_ms=2, acks=1)
    await consumer.start()
    await producer.start()
    try:
        await consumer.topics()  # a metadata refresh: the topic's partitions
        parts = consumer.partitions_for_topic(in_topic)
        if not parts:
            raise SystemExit(f"topic {in_topic!r} not found")
        consumer.assign([TopicPartition(in_topic, p) for p in sorted(parts)])
        await consumer.seek_to_end()
        print("ready", flush=True)
        while True:
            batches = await consumer.getmany(timeout_ms=1000)
            pending = [await producer.send(out_topic, r.value, key=r.key)
                       for records in batches.values() for r in records]
            if pending:  # like the worker: a batch is done when the broker has its output
                await asyncio.gather(*pending)
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(passthrough(load_settings(bootstrap_servers=sys.argv[1]), sys.argv[2],
                            sys.argv[3], int(sys.argv[4])))
