"""Whole-batch encoding gives exactly what the per-event reference (seq_rows) gives."""

from __future__ import annotations

import math
from unittest.mock import patch

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model import encoding
from model.encoding import (
    encode_rows,
    encode_sequences,
    encode_with_copy_ids,
    feature_matrix,
    seq_rows,
)
from model.types import EVENT_TYPES, SeqItem
from model.vocab import UNK, ItemVocab

KNOWN = [f"k{i}" for i in range(8)]


def _vocab() -> ItemVocab:
    v = ItemVocab(capacity=100)
    v.add_all(KNOWN)
    return v


# items known and unknown, event types known and not, gaps negative, zero, sub-second,
# around the log2 bucket edges, and beyond the top bucket
_events = st.lists(st.tuples(st.sampled_from([*KNOWN, "u1", "u2", "u3"]),
                             st.sampled_from([*EVENT_TYPES, "other"]),
                             st.sampled_from([-5_000, 0, 1, 999, 1_000, 1_999, 2_000, 3_000,
                                              7_000, 10 ** 6, 2 ** 21 * 1000, 10 ** 13])),
                   max_size=24)


def _seqs(raw: list[list[tuple[str, str, int]]]) -> list[tuple[SeqItem, ...]]:
    out = []
    for events in raw:
        ts, seq = 1_700_000_000_000, []
        for item, etype, gap in events:
            ts += gap
            seq.append(SeqItem(item, etype, ts))
        out.append(tuple(seq))
    return out


def _reference_copy_ids(seqs: list[tuple[SeqItem, ...]], vocab: ItemVocab, max_len: int,
                        n_items: int, width: int) -> tuple[torch.Tensor, list[str]]:
    """Table ids, batch-local ids from n_items for unknown items, one row at a time."""
    unknown: dict[str, int] = {}
    rows = []
    for s in seqs:
        row = seq_rows(s, vocab, max_len)
        tail = s[-len(row):] if row else ()
        ids = [i if i != UNK else unknown.setdefault(e.item_id, n_items + len(unknown))
               for (i, _, _), e in zip(row, tail, strict=True)]
        rows.append(ids + [0] * (width - len(ids)) if ids else [1] + [0] * (width - 1))
    return torch.tensor(rows, dtype=torch.int64).reshape(len(seqs), width), list(unknown)


# the whole-batch path (threshold 0) and the row-by-row one small batches take
_PATHS = st.sampled_from([0, 10 ** 9])


@settings(max_examples=300, deadline=None)
@given(raw=st.lists(_events, min_size=1, max_size=6), max_len=st.sampled_from([1, 3, 8, 16]),
       pad_to=st.sampled_from([None, 1, 4, 16, 32]), read_items=st.booleans(), small=_PATHS)
def test_batch_encoding_equals_the_per_event_reference(
        raw: list[list[tuple[str, str, int]]], max_len: int, pad_to: int | None,
        read_items: bool, small: int) -> None:
    seqs = _seqs(raw)
    vocab = _vocab() if read_items else ItemVocab(1)
    want = encode_rows([seq_rows(s, vocab, max_len) for s in seqs], max_len, pad_to)
    with patch.object(encoding, "SMALL_BATCH_EVENTS", small):
        got = encode_sequences(seqs, vocab if read_items else None, max_len, pad_to)
    for field in ("items", "types", "gaps", "lengths"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field


@settings(max_examples=300, deadline=None)
@given(raw=st.lists(_events, min_size=1, max_size=6), max_len=st.sampled_from([1, 3, 8, 16]),
       small=_PATHS)
def test_copy_ids_number_unknown_items_in_order_of_first_appearance(
        raw: list[list[tuple[str, str, int]]], max_len: int, small: int) -> None:
    seqs, vocab = _seqs(raw), _vocab()
    with patch.object(encoding, "SMALL_BATCH_EVENTS", small):
        batch, copy_ids, names = encode_with_copy_ids(seqs, vocab, max_len, n_items=50)
    want, want_names = _reference_copy_ids(seqs, vocab, max_len, 50, batch.items.shape[1])
    assert torch.equal(copy_ids, want)
    assert names == want_names
    known = copy_ids < 50
    assert torch.equal(copy_ids[known], batch.items[known])  # only unknown items differ


def test_rows_that_fill_the_width_and_rows_that_do_not_encode_alike(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Full rows take a no-padding shortcut; alone or mixed with short ones, same tensors."""
    monkeypatch.setattr(encoding, "SMALL_BATCH_EVENTS", 0)
    seqs = _seqs([[("k1", "view", 1_000)] * 8, [("u1", "click", 5_000)] * 8,
                  [("k2", "purchase", 0)] * 3])
    mixed = encode_with_copy_ids(seqs, _vocab(), 8, 50, pad_to=8)
    full = encode_with_copy_ids(seqs[:2], _vocab(), 8, 50, pad_to=8)
    for a, b in zip((mixed[0].items, mixed[0].types, mixed[0].gaps, mixed[1]),
                    (full[0].items, full[0].types, full[0].gaps, full[1]), strict=True):
        assert torch.equal(a[:2], b)
    assert mixed[2] == full[2] == ["u1"]


@pytest.mark.parametrize("small", [0, 10 ** 9])
def test_feature_matrix_reads_missing_none_and_non_finite_as_zero(
        small: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoding, "SMALL_FEATURE_ROWS", small)
    names = ["a", "b", "c", "d"]
    numbers = [{"a": 1.5, "b": 2, "c": float("nan")}, {"d": float("inf"), "a": -3.0}]
    got = feature_matrix(numbers, names)
    assert got.dtype == torch.float32
    assert got.tolist() == [[1.5, 2.0, 0.0, 0.0], [-3.0, 0.0, 0.0, 0.0]]
    # a None or a numeric string takes the general path, with the same rules
    odd = feature_matrix([{"a": None, "b": "2.5", "c": -math.inf}], names)  # type: ignore[dict-item]
    assert odd.tolist() == [[0.0, 2.5, 0.0, 0.0]]
    assert feature_matrix([], names).shape == (0, 4)
    assert feature_matrix([{}, {}], []).shape == (2, 0)
