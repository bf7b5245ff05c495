"""Interactive queries: which worker to ask for a user's features, and asking them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.partitioner import murmur2

from stream.worker import routing
from stream.worker.routing import ask_peers, partition_owners, peers_to_ask

ME, A, B, C = "http://w0:6066", "http://w1:6066", "http://w2:6066", "http://w3:6066"
CHANGELOG = "lamstream-features-changelog"


def test_owners_come_from_the_changelog_partitions_of_each_member() -> None:
    distribution = {ME: {CHANGELOG: [0, 3], "other-changelog": [1]}, A: {CHANGELOG: [1, 2]},
                    B: {}}
    assert partition_owners(distribution, CHANGELOG) == {0: ME, 3: ME, 1: A, 2: A}


def test_the_likely_owner_comes_first_then_every_other_worker_once() -> None:
    owners = {0: ME, 1: A, 2: B, 3: C, 4: A, 5: B, 6: C, 7: ME}
    for user in (f"u{i}" for i in range(50)):
        likely = owners[(murmur2(user.encode()) & 0x7FFFFFFF) % 8]
        peers = peers_to_ask(user.encode(), owners, ME)
        assert sorted(peers) == [A, B, C]  # never this worker, never twice
        if likely != ME:
            assert peers[0] == likely
    assert peers_to_ask(b"u1", {}, ME) == []  # not assigned yet: nobody to ask
    assert peers_to_ask(b"u1", {0: ME, 1: ME}, ME) == []  # a single worker


def answering(answers: dict[str, Any], calls: list[str]) -> routing.PeerGet:
    async def get(peer: str) -> tuple[int, Any]:
        calls.append(peer)
        answer = answers[peer]
        if isinstance(answer, Exception):
            raise answer
        if answer == "hang":
            await asyncio.sleep(60)
        return answer  # type: ignore[no-any-return]
    return get


def test_the_likely_owner_alone_is_asked_when_it_has_the_user() -> None:
    calls: list[str] = []
    get = answering({A: (200, {"user_id": "u1"}), B: (404, {}), C: (404, {})}, calls)
    answer = asyncio.run(ask_peers([A, B, C], get, "u1"))
    assert (answer.status, answer.body, answer.served_by) == (200, {"user_id": "u1"}, A)
    assert calls == [A]


def test_the_others_are_asked_when_the_likely_owner_does_not_have_it() -> None:
    calls: list[str] = []
    get = answering({A: (404, {}), B: (404, {}), C: (200, {"user_id": "u1"})}, calls)
    answer = asyncio.run(ask_peers([A, B, C], get, "u1"))
    assert (answer.status, answer.served_by) == (200, C)
    assert calls[0] == A and sorted(calls) == [A, B, C]


def test_nobody_has_it_is_a_404() -> None:
    get = answering({A: (404, {}), B: (404, {})}, [])
    answer = asyncio.run(ask_peers([A, B], get, "ghost"))
    assert answer.status == 404 and "unknown user 'ghost'" in answer.body["error"]
    assert asyncio.run(ask_peers([], get, "ghost")).status == 404


def test_a_worker_that_cannot_be_asked_makes_it_a_503_naming_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routing, "PEER_TIMEOUT_S", 0.05)
    get = answering({A: (404, {}), B: ConnectionRefusedError("refused"), C: "hang"}, [])
    answer = asyncio.run(ask_peers([A, B, C], get, "u1"))
    assert answer.status == 503
    error = answer.body["error"]
    assert "2 worker(s) could not be asked" in error
    assert f"{B} (ConnectionRefusedError: refused)" in error and f"{C} (TimeoutError)" in error
    get = answering({A: (500, {}), B: (401, {"error": "missing or wrong token"})}, [])
    error = asyncio.run(ask_peers([A, B], get, "u1")).body["error"]
    assert f"{A} (HTTP 500)" in error and f"{B} (HTTP 401)" in error


def test_a_peer_that_has_the_user_wins_over_one_that_failed() -> None:
    get = answering({A: OSError("down"), B: (200, {"user_id": "u1"})}, [])
    answer = asyncio.run(ask_peers([A, B], get, "u1"))
    assert (answer.status, answer.served_by) == (200, B)
