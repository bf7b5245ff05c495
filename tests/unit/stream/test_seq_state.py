"""The user's sequence-model state in the worker: carried in the user's state, sent to a
predictor that keeps one, stored back with the rest of the state (issue 17 item 3)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import torch

from model.encoding import encode_sequences
from model.predictor import Predictor, keeps_seq_state
from model.recommenders.sequence import state_from_bytes
from model.serving import ModelPredictor
from model.testing import FakePredictor
from model.types import SeqItem
from stream.schemas import decode_event
from stream.settings import Settings
from stream.state.features import FeatureConfig, UserState
from stream.topics import topics_for
from stream.worker import steps
from stream.worker.ingest import IngestAgent
from stream.worker.metrics import Metrics
from tests.unit.model.test_hybrid import STATE_TOL, _hybrid
from tests.unit.stream.test_ingest_pipeline import (
    CHANGELOG,
    Msg,
    _App,
    _EventsTopic,
    _Producer,
    _Store,
    _Table,
)

T0 = 1_700_000_000_000
_offsets = iter(range(1_000_000))


def _agent(predictor: Predictor, store: _Store | None = None
           ) -> tuple[IngestAgent, _Producer, _Store]:
    settings = Settings(decision_log=False)
    producer = _Producer()
    table = _Table()
    if store is not None:
        table.data = store
    agent = IngestAgent(app=_App(producer), settings=settings, topics=topics_for(settings),
                        table=table, features=FeatureConfig.from_settings(settings),
                        metrics=Metrics(), events_topic=_EventsTopic(), predictor=predictor)
    return agent, producer, table.data


def _batch(events: list[tuple[str, str, int]]) -> list[tuple[Msg, float]]:
    """(user, item, ts) each, one message each, all on partition 3."""
    out = []
    for user, item, ts in events:
        ev = {"event_id": f"{user}-{ts}", "user_id": user, "type": "view", "item_id": item,
              "ts": ts}
        out.append((Msg(user.encode(), orjson.dumps(ev), 3, next(_offsets)), 0.0))
    return out


def _run(agent: IngestAgent, batches: list[list[tuple[Msg, float]]]) -> None:
    async def go() -> None:
        for b in batches:
            await agent.process(b)
    asyncio.run(go())


def _state(store: _Store, user: str) -> UserState:
    return UserState.from_bytes(store.data[user.encode()], 3)


def _stream(users: int, per_user: int, seed: int = 0) -> list[tuple[str, str, int]]:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(0, 12, (users * per_user,), generator=g).tolist()
    return [(f"u{k % users}", f"i{items[k]}", T0 + 60_000 * k) for k in range(users * per_user)]


def test_a_state_with_a_sequence_state_round_trips_and_old_states_stay_readable() -> None:
    cfg = FeatureConfig()
    st = UserState("u1", 3)
    plain = st.to_bytes()
    assert len(orjson.loads(plain)) == 19  # no sequence state: the bytes of before
    assert UserState.from_bytes(plain, 3).seq_state is None
    st.seq_state = bytes(range(256))
    back = UserState.from_bytes(st.to_bytes(), 3)
    assert back.seq_state == bytes(range(256)) and back.to_bytes() == st.to_bytes()
    # an idle user's reset forgets it with everything else
    back.seen_ms = 1
    back.apply(_ev("e1"), cfg, 1 + cfg.user_ttl_s * 1000 + 1)
    assert back.seq_state is None


def _ev(event_id: str) -> Any:
    raw = orjson.dumps({"event_id": event_id, "user_id": "u1", "type": "view",
                        "item_id": "x", "ts": T0})
    return decode_event(raw, b"u1", 10_000, True)


def test_fold_sends_the_stored_state_with_a_users_first_event_of_the_batch_only() -> None:
    st = UserState("u1", 3)
    st.seq_state = b"kept"
    stored = {b"u1": st.to_bytes()}
    msgs = _batch([("u1", "a", T0), ("u2", "b", T0), ("u1", "c", T0 + 1)])
    grouped: steps.Grouped = {3: {}}
    for m, recv in msgs:
        ev = _decode(m)
        grouped[3].setdefault(ev.user_id, []).append((ev, recv))
    cfg = FeatureConfig()
    for keep, want in ((True, [b"kept", b"", b""]), (False, [None, None, None])):
        pending, _ = steps.fold(grouped, lambda _p: stored.get, cfg, ("view",), 10, T0,
                                steps.BatchStats(), keep)
        assert [p.ctx.seq_state for p in pending] == want  # u1 a, u1 c, u2 b


def _decode(m: Msg) -> Any:
    return decode_event(m.value, m.key, 10_000, True)


@pytest.mark.parametrize("keeps", [True, False])
def test_the_worker_keeps_the_state_a_predictor_returns_and_only_for_one_that_keeps(
        keeps: bool) -> None:
    """The fake's state is the history's items joined: after every batch the stored state is
    what re-encoding the stored history gives, in the store and on the changelog."""
    fake = FakePredictor(keeps_seq_state=keeps)
    assert keeps_seq_state(fake) is keeps
    agent, producer, store = _agent(fake)
    events = _stream(3, 12)
    _run(agent, [_batch(events[i: i + 7]) for i in range(0, len(events), 7)])
    for u in ("u0", "u1", "u2"):
        st = _state(store, u)
        want = b"|".join(e.item_id.encode() for e in st.seq) if keeps else None
        assert st.seq_state == want
        last = [v for topic, _, recs in producer.sent if topic == CHANGELOG
                for k, v in recs if k == u.encode() and v][-1]
        assert UserState.from_bytes(last, 3).seq_state == want
        assert len(orjson.loads(last)) == (20 if keeps else 19)


def _full_encode(pred: ModelPredictor, hist: list[SeqItem]) -> torch.Tensor:
    """The state after a pass over the user's whole history (no max_len cut)."""
    seq = pred.recommender.seq  # type: ignore[attr-defined]
    batch = encode_sequences([hist], seq.vocab, max_len=len(hist))
    with torch.inference_mode():
        out: torch.Tensor = seq.net.encode_state(batch)[:, 0]
        return out


def _check(pred: ModelPredictor, store: _Store, users: list[str], version: str) -> None:
    for u in users:
        st = _state(store, u)
        assert st.seq_state is not None
        got = state_from_bytes(st.seq_state)
        assert got.version == version and got.events == len(st.seq)
        torch.testing.assert_close(got.hidden, _full_encode(pred, list(st.seq)),
                                   rtol=STATE_TOL, atol=STATE_TOL)


def _count_steps(pred: ModelPredictor) -> list[int]:
    """Rows each batched GRU step advanced (a spy on the sequence model)."""
    seq = pred.recommender.seq  # type: ignore[attr-defined]
    rows: list[int] = []
    step = seq.step_batch

    def spy(states: Any, events: Any) -> Any:
        rows.append(len(states))
        return step(states, events)
    seq.step_batch = spy
    return rows


def test_a_hybrids_incremental_states_equal_a_full_re_encode_across_restart_and_swap() -> None:
    """A real (untrained) hybrid through the worker: several batches with several events per
    user, a restart from the store the changelog fills, then a hot swap to another version:
    each stored state equals a full pass over the user's history within STATE_TOL."""
    v1 = ModelPredictor(_hybrid(), None, version="v1", risk_version=None)
    v1.recommender.seq.version = "v1"  # type: ignore[attr-defined]
    users = ["u0", "u1", "u2", "u3"]
    events = _stream(4, 15, seed=4)  # 15 events a user: under the sequence length kept (50)
    steps_v1 = _count_steps(v1)
    try:
        agent, producer, store = _agent(v1)
        # batches of 5 over 4 users: one user has two events in each (the second re-encoded)
        _run(agent, [_batch(events[i: i + 5]) for i in range(0, 30, 5)])
        _check(v1, store, users, "v1")
        assert sum(steps_v1) >= 15  # most events were one step, not a re-encode
        # restart: a new agent on a store rebuilt from the changelog alone
        restored = _Store()
        for topic, _, recs in producer.sent:
            if topic == CHANGELOG:
                for k, v in recs:
                    assert k is not None and v is not None
                    restored.data[k] = v
        agent, producer, store = _agent(v1, restored)
        before = sum(steps_v1)
        _run(agent, [_batch(events[i: i + 5]) for i in range(30, 45, 5)])
        _check(v1, store, users, "v1")
        assert sum(steps_v1) - before >= 8  # stepped from the states the changelog restored
        # hot swap: the next event of each user re-encodes (the new version in its state)
        v2 = ModelPredictor(_hybrid(), None, version="v2", risk_version=None)
        v2.recommender.seq.version = "v2"  # type: ignore[attr-defined]
        steps_v2 = _count_steps(v2)
        agent.holder.offer(v2)
        _run(agent, [_batch(events[i: i + 5]) for i in range(45, 60, 5)])
        _check(v2, store, users, "v2")
        # each user's first event after the swap re-encoded (no v1 state stepped), then steps
        assert 0 < sum(steps_v2) <= 15 - len(users)
    finally:
        v1.close()


def test_states_stay_exact_when_another_model_served_in_between() -> None:
    """Hybrid v1, then a predictor that keeps no state for a few batches (a rollback to the
    baseline), then v1 again: the states v1 left are behind the history, so each user's next
    event re-encodes instead of stepping past the events v1 never saw."""
    v1 = ModelPredictor(_hybrid(), None, version="v1", risk_version=None)
    v1.recommender.seq.version = "v1"  # type: ignore[attr-defined]
    events = _stream(4, 12, seed=6)
    try:
        agent, _, store = _agent(v1)
        _run(agent, [_batch(events[i: i + 4]) for i in range(0, 16, 4)])
        agent.holder.offer(FakePredictor())
        _run(agent, [_batch(events[i: i + 4]) for i in range(16, 32, 4)])
        assert all(_state(store, u).seq_state is not None for u in ("u0", "u1", "u2", "u3"))
        # v1 again (a predictor the holder closed cannot serve twice: a new one, same model)
        again = ModelPredictor(v1.recommender, None, version="v1", risk_version=None)
        agent.holder.offer(again)
        _run(agent, [_batch(events[i: i + 4]) for i in range(32, 48, 4)])
        _check(again, store, ["u0", "u1", "u2", "u3"], "v1")
        again.close()
    finally:
        v1.close()
