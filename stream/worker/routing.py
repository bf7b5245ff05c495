"""Interactive queries: which worker holds a user's features, and asking it for them.

A user's state lives with the partition its events arrived on, and each partition belongs to
one worker of the group. So any worker can answer `GET /features/{user}`: from its own
partitions, or else by asking the others over HTTP (as Kafka Streams' interactive queries
do). Faust's partition assignor already tells every member which URL owns which table
partition; this module turns that into an order in which to ask, and asks.

The likely owner is asked first: the partition Kafka's default partitioner (murmur2, as
the Java client, kafka-python, aiokafka and lamstream's SDK use) gives the user id. A producer
with another partitioner (librdkafka's default is CRC32) puts the user elsewhere, so when the
likely owner does not have the user, the other workers are asked at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stream.kafka.publish import default_partition

LOCAL_ONLY = "local"  # query parameter: answer from this worker's own partitions only
SERVED_BY = "X-Lamstream-Worker"  # response header: the worker whose state answered
PEER_TIMEOUT_S = 3.0

# asks one peer for the user on its own partitions: (HTTP status, JSON body)
PeerGet = Callable[[str], Awaitable[tuple[int, Any]]]


def partition_owners(distribution: Mapping[str, Mapping[str, Sequence[int]]],
                     changelog: str) -> dict[int, str]:
    """partition -> URL of the worker it is active on, from Faust's changelog distribution
    ({url: {topic: [partitions]}}, the same on every member after a rebalance)."""
    return {p: url for url, topics in distribution.items() for p in topics.get(changelog, ())}


def peers_to_ask(key: bytes, owners: Mapping[int, str], me: str) -> list[str]:
    """Every other worker once, the likely owner of `key` first."""
    if not owners:
        return []
    likely = owners.get(default_partition(key, max(owners) + 1))
    first = [likely] if likely is not None and likely != me else []
    return first + sorted({url for url in owners.values() if url != me and url != likely})


@dataclass
class PeerAnswer:
    """What the other workers said: 200 with the owner's body, 404 when every one of them
    answered that it does not have the user, 503 when one could not be asked (so a 404
    would be a guess)."""

    status: int
    body: Any
    served_by: str | None = None


async def ask_peers(peers: Sequence[str], get: PeerGet, user_id: str) -> PeerAnswer:
    """The first peer alone, then the others concurrently; the first 200 wins."""
    failed: list[str] = []

    async def one(peer: str) -> tuple[str, Any] | None:
        try:
            status, body = await asyncio.wait_for(get(peer), PEER_TIMEOUT_S)
        except Exception as exc:  # unreachable, timed out, not JSON: said in the 503
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            failed.append(f"{peer} ({why})")
            return None
        if status == 200:
            return peer, body
        if status != 404:
            failed.append(f"{peer} (HTTP {status})")
        return None

    if peers:
        found = await one(peers[0])
        if found is None and len(peers) > 1:
            rest = [asyncio.ensure_future(one(p)) for p in peers[1:]]
            try:
                for next_done in asyncio.as_completed(rest):
                    found = await next_done
                    if found is not None:
                        break
            finally:
                for task in rest:
                    task.cancel()
        if found is not None:
            return PeerAnswer(200, found[1], found[0])
    if failed:
        return PeerAnswer(503, {"error": f"user {user_id!r} is not on this worker and "
                                         f"{len(failed)} worker(s) could not be asked: "
                                         + "; ".join(sorted(failed))})
    return PeerAnswer(404, {"error": f"unknown user {user_id!r}"})
