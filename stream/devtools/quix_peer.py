"""The Quix Streams peer of `lamstream bench quix`: a minimal stateful job, run in its own venv.

    python quix_peer.py BOOTSTRAP INPUT_TOPIC OUTPUT_TOPIC GROUP STATE_DIR N

It reads JSON events from INPUT_TOPIC (consumer group GROUP, from the earliest offset),
counts each user's events in Quix's state (RocksDB under STATE_DIR, a changelog topic on the
broker), writes one JSON record per event to OUTPUT_TOPIC (the event id, the user, the count
and the wall-clock time it was processed at) and stops after N outputs. It is the job a
Quix Streams user would write first, at Quix's defaults (at-least-once, commit every 5 s).

quixstreams is not a lamstream dependency: no lamstream module imports this file, and the
bench runs it with the interpreter of a separate venv (stream.devtools.bench_quix).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from quixstreams import Application
from quixstreams.state import State


def count(event: dict[str, Any], state: State) -> dict[str, Any]:
    """The user's running count of events, one output per event."""
    n = int(state.get("count", 0)) + 1
    state.set("count", n)
    return {"event_id": event["event_id"], "user_id": event["user_id"], "count": n,
            "processed_at": time.time()}


def main(argv: list[str]) -> None:
    bootstrap, source, sink, group, state_dir, n = argv[1:7]
    app = Application(broker_address=bootstrap, consumer_group=group,
                      auto_offset_reset="earliest", state_dir=state_dir, loglevel="WARNING")
    events = app.topic(source, key_deserializer="str", value_deserializer="json")
    outputs = app.topic(sink, key_serializer="str", value_serializer="json")
    sdf = app.dataframe(events)
    sdf = sdf.apply(count, stateful=True)
    sdf.to_topic(outputs)
    app.run(count=int(n), collect=False)


if __name__ == "__main__":
    main(sys.argv)
