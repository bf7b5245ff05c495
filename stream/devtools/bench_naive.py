"""The baseline of `lamstream bench pipeline`: a Faust agent as its docs teach it.

One event at a time: decode, update a per-user count in a table, await a send per event.
Run as `python -m stream.devtools.bench_naive BOOTSTRAP TOPIC N DATA_DIR`; prints one JSON line with
the measured rate when N events were processed, then stops. Security settings (SASL / TLS)
come from the LAMSTREAM_* environment, as for the worker.
"""

from __future__ import annotations

import os
import sys
import time

import faust
import orjson

from stream.kafka.faust_app import faust_brokers, faust_credentials
from stream.settings import load_settings


def main(bootstrap: str, topic: str, n: int, data_dir: str) -> None:
    credentials = faust_credentials(load_settings(bootstrap_servers=bootstrap))
    app = faust.App(
        f"naive-{topic}", broker=faust_brokers(bootstrap),
        broker_credentials=credentials, store="rocksdb://", datadir=data_dir,
        autodiscover=False, consumer_auto_offset_reset="earliest",
        broker_session_timeout=30.0, broker_rebalance_timeout=6.0,
        broker_heartbeat_interval=1.0, broker_max_poll_interval=60.0, web_enabled=False,
        topic_partitions=None,
    )
    source = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw")
    out = app.topic(f"{topic}.naive-out", key_type=bytes, value_type=bytes,
                    key_serializer="raw", value_serializer="raw")
    counts = app.Table(f"naive-counts-{topic}", default=int)
    state = {"seen": 0, "t0": 0.0}

    @app.agent(source)
    async def process(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            event = orjson.loads(value)
            if state["seen"] == 0:
                state["t0"] = time.perf_counter()
            counts[event["user_id"]] += 1
            await out.send(key=event["user_id"].encode(), value=value)
            state["seen"] += 1
            if state["seen"] >= n:
                dt = time.perf_counter() - state["t0"]
                print(orjson.dumps({"events": n, "seconds": dt, "eps": n / dt}).decode(),
                      flush=True)
                os._exit(0)  # measured; a benchmark process needs no graceful shutdown

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        pass


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
