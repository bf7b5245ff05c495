"""Turn user event sequences and feature dicts into padded tensors the nets read."""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, compress, repeat

import torch

from model.types import EVENT_TYPE_INDEX, EVENT_TYPES, SeqItem
from model.vocab import UNK, ItemVocab

__all__ = [
    "LENGTH_BUCKETS", "N_GAPS", "N_TYPES", "SMALL_BATCH_EVENTS", "SMALL_FEATURE_ROWS", "SeqBatch",
    "bucket_length", "encode_rows", "encode_sequences", "encode_with_copy_ids", "feature_matrix",
    "gap_bucket", "seq_rows", "signed_log1p", "type_index",
]

N_TYPES = len(EVENT_TYPES) + 1  # 0 = padding
N_GAPS = 24  # 0 = padding, 1 = first event, 2.. = log2 buckets of the gap in seconds
LENGTH_BUCKETS: tuple[int, ...] = (8, 16, 32, 64, 128, 256)


def gap_bucket(gap_ms: int | None) -> int:
    """Log2 bucket of the time since the previous event: 1 means no previous event."""
    if gap_ms is None:
        return 1
    # floor(log2(1 + whole seconds)) via bit_length: same buckets, no float log per event
    return 2 + min(N_GAPS - 3, (1 + max(0, gap_ms) // 1000).bit_length() - 1)


def type_index(event_type: str) -> int:
    return EVENT_TYPE_INDEX.get(event_type, 0) + 1


_TYPE_IDX: dict[str, int] = {t: i + 1 for t, i in EVENT_TYPE_INDEX.items()}


def bucket_length(n: int, max_len: int) -> int:
    """Pad to a few fixed lengths so batches reuse shapes (and kernels, and CUDA graphs)."""
    for b in LENGTH_BUCKETS:
        if n <= b:
            return min(b, max_len)
    return max_len


@dataclass(slots=True)
class SeqBatch:
    """Right-padded sequences: real events first, padding after, so causal nets ignore pads."""

    items: torch.Tensor  # (B, L) int64 item ids
    types: torch.Tensor  # (B, L) int64
    gaps: torch.Tensor  # (B, L) int64
    lengths: torch.Tensor  # (B,) int64, >= 1

    def to(self, device: torch.device, non_blocking: bool = False) -> SeqBatch:
        return SeqBatch(self.items.to(device, non_blocking=non_blocking),
                        self.types.to(device, non_blocking=non_blocking),
                        self.gaps.to(device, non_blocking=non_blocking),
                        self.lengths.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> SeqBatch:
        return SeqBatch(self.items.pin_memory(), self.types.pin_memory(),
                        self.gaps.pin_memory(), self.lengths.pin_memory())

    def take(self, rows: slice | torch.Tensor, width: int) -> SeqBatch:
        """These rows (a slice or row indices), padded to `width` (not below their lengths)."""
        return SeqBatch(self.items[rows, :width], self.types[rows, :width],
                        self.gaps[rows, :width], self.lengths[rows])


def encode_rows(rows: Sequence[Sequence[tuple[int, int, int]]], max_len: int,
                pad_to: int | None = None) -> SeqBatch:
    """rows: per sequence a list of (item_id, type_idx, gap_bucket), oldest first."""
    longest = max((min(len(r), max_len) for r in rows), default=1)
    length = pad_to if pad_to is not None else bucket_length(max(1, longest), max_len)
    pad = (0, 0, 0)
    padded: list[list[tuple[int, int, int]]] = []
    lengths: list[int] = []
    for r in rows:
        r = list(r)[-min(max_len, length):]
        if not r:
            r = [(1, 0, 1)]  # one unknown event keeps the row valid
        lengths.append(len(r))
        padded.append(r + [pad] * (length - len(r)))
    # one tensor from nested lists: far cheaper than per-row tensor writes
    t = torch.tensor(padded, dtype=torch.int64).reshape(len(rows), length, 3)
    return SeqBatch(t[:, :, 0], t[:, :, 1], t[:, :, 2],
                    torch.tensor(lengths, dtype=torch.int64))


_TOP_GAP = N_GAPS - 3


def seq_rows(seq: Sequence[SeqItem], vocab: ItemVocab, max_len: int) -> list[tuple[int, int, int]]:
    """(item id, type index, gap bucket) per event of the last `max_len`, oldest first.

    One loop with `gap_bucket` inlined: this runs for every event of every served sequence
    and was a quarter of a batch's serving time as separate comprehensions.
    """
    tail = seq[-max_len:] if max_len < len(seq) else seq
    ids = vocab.ids([ev[0] for ev in tail])
    tix = _TYPE_IDX.get
    out: list[tuple[int, int, int]] = []
    prev: int | None = None
    for (_, etype, ts), idx in zip(tail, ids, strict=True):
        if prev is None:
            gap = 1
        else:
            d = ts - prev
            b = (1 + d // 1000).bit_length() + 1 if d > 0 else 2
            gap = b if b < _TOP_GAP + 2 else _TOP_GAP + 2
        out.append((idx, tix(etype, 1), gap))
        prev = ts
    return out


# Below this many events a batch is encoded row by row: the whole-batch path has a fixed
# cost of a dozen tensor ops (~50 us) that a per-event loop only overtakes past ~100 events.
SMALL_BATCH_EVENTS = 128
_NO_VOCAB = ItemVocab(1)  # reads every item as unknown


def encode_sequences(seqs: Sequence[Sequence[SeqItem]], vocab: ItemVocab | None, max_len: int,
                     pad_to: int | None = None) -> SeqBatch:
    """`encode_rows` of every sequence's `seq_rows` (in a few whole-batch tensor ops when the
    batch is large). A vocab that is None reads every real event as the unknown item (for
    nets that ignore items)."""
    if sum(map(len, seqs)) < SMALL_BATCH_EVENTS:
        return encode_rows([seq_rows(s, vocab or _NO_VOCAB, max_len) for s in seqs], max_len,
                           pad_to)
    return _encode(seqs, vocab, max_len, pad_to).batch


def encode_with_copy_ids(seqs: Sequence[Sequence[SeqItem]], vocab: ItemVocab, max_len: int,
                         n_items: int, pad_to: int | None = None
                         ) -> tuple[SeqBatch, torch.Tensor, list[str]]:
    """`encode_sequences` plus copy ids, (B, L) table ids in which history items unknown to
    the vocabulary get batch-local ids n_items, n_items + 1, ... (in order of first appearance,
    one per distinct string), and those unknown strings in id order."""
    if sum(map(len, seqs)) < SMALL_BATCH_EVENTS:
        return _copy_ids_by_row(seqs, vocab, max_len, n_items, pad_to)
    enc = _encode(seqs, vocab, max_len, pad_to)
    if enc.ids is None:
        return enc.batch, enc.batch.items, []
    at = (enc.ids == UNK).nonzero().squeeze(1).tolist()
    if not at:
        return enc.batch, enc.batch.items, []
    unknown: dict[str, int] = {}
    local = [unknown.setdefault(enc.names[j], n_items + len(unknown)) for j in at]
    flat = enc.ids.clone()
    flat[at] = torch.tensor(local, dtype=torch.int64)
    if enc.real is None:
        return enc.batch, flat.view_as(enc.batch.items), list(unknown)
    copy_ids = enc.batch.items.clone()
    copy_ids[enc.real] = flat
    return enc.batch, copy_ids, list(unknown)


def _copy_ids_by_row(seqs: Sequence[Sequence[SeqItem]], vocab: ItemVocab, max_len: int,
                     n_items: int, pad_to: int | None
                     ) -> tuple[SeqBatch, torch.Tensor, list[str]]:
    rows = [seq_rows(s, vocab, max_len) for s in seqs]
    batch = encode_rows(rows, max_len, pad_to)
    if not any(i == UNK for r in rows for i, _, _ in r):
        return batch, batch.items, []
    width = batch.items.shape[1]
    keep = min(max_len, width)
    unknown: dict[str, int] = {}
    copy = []
    for s, r in zip(seqs, rows, strict=True):
        r = r[-keep:]
        tail = s[-len(r):] if r else ()
        ids = [i if i != UNK else unknown.setdefault(e[0], n_items + len(unknown))
               for (i, _, _), e in zip(r, tail, strict=True)]
        copy.append(ids + [0] * (width - len(ids)) if ids else [1] + [0] * (width - 1))
    return (batch, torch.tensor(copy, dtype=torch.int64).reshape(len(seqs), width),
            list(unknown))


@dataclass(slots=True)
class _Encoded:
    batch: SeqBatch
    real: torch.Tensor | None  # (B, L) bool, the real events; None: every position is one
    ids: torch.Tensor | None  # item ids of the real events, row-major; None: vocab not read
    names: tuple[str, ...]  # their item strings


# A gap of d ms falls in bucket 2 + #{j >= 1 : d // 1000 + 1 >= 2**j}, capped at the top one:
# bucketize(right=True) counts the edges <= d, and two edges below any gap add the 2.
_MIN = -(2 ** 63)
_GAP_EDGES = torch.tensor([_MIN, _MIN, *(1000 * (2 ** j - 1) for j in range(1, _TOP_GAP + 1))],
                          dtype=torch.int64)


def _encode(seqs: Sequence[Sequence[SeqItem]], vocab: ItemVocab | None, max_len: int,
            pad_to: int | None) -> _Encoded:
    """What `encode_rows(seq_rows(..))` gives, in a fixed number of Python-level passes: item
    ids and types by C-level map lookups over all events at once, one tensor of ids, types and
    timestamps, gaps by `bucketize`, rows written into the padded tensor with one boolean
    mask (row-major, so events land oldest first) or, when every row fills it, a view."""
    tails = [s[-max_len:] if len(s) > max_len else s for s in seqs]
    lengths = list(map(len, tails))
    longest = max(lengths, default=0)
    width = pad_to if pad_to is not None else bucket_length(max(1, longest), max_len)
    keep = min(max_len, width)
    flat = list(chain.from_iterable(tails))
    n = len(flat)
    if not n:
        vals = torch.zeros((3, 0), dtype=torch.int64)
        names: tuple[str, ...] = ()
    else:
        names, etypes, stamps = zip(*flat, strict=True)
        # one int64 buffer of ids, types and timestamps filled by C-level loops (torch.tensor
        # on Python lists costs several times more per element), read without a copy
        buf = vocab.id_array(names) if vocab is not None and len(vocab) else array("q", [UNK]) * n
        buf.extend(map(_TYPE_IDX.get, etypes, repeat(1, n)))
        buf.extend(stamps)
        vals = torch.frombuffer(buf, dtype=torch.int64).view(3, n)
        torch.bucketize(torch.diff(vals[2]), _GAP_EDGES, right=True, out=vals[2, 1:])
        if n == len(tails) * longest:  # a row's first event has no previous one
            vals[2, ::longest] = 1
        else:
            vals[2, [s for s, ln in zip(accumulate(lengths[:-1], initial=0), lengths,
                                        strict=True) if ln]] = 1
    ids = vals[0] if vocab is not None and len(vocab) else None
    kept = lengths
    if longest > keep:  # a pad_to below a row's length keeps its last `keep` events
        lens = torch.tensor(lengths, dtype=torch.int64)
        first = torch.repeat_interleave(lens.cumsum(0) - lens, lens)
        drop = torch.repeat_interleave((lens - keep).clamp(min=0), lens)
        sel = torch.arange(n) - first >= drop
        vals = vals[:, sel]
        ids = None if ids is None else ids[sel]
        names = tuple(compress(names, sel.tolist()))
        kept = [min(ln, keep) for ln in lengths]
    rows = len(tails)
    if vals.shape[1] == rows * width:  # every row fills the width: no padding to write
        items, types, gaps = vals.view(3, rows, width)
        return _Encoded(SeqBatch(items, types, gaps,
                                 torch.full((rows,), width, dtype=torch.int64)), None, ids, names)
    out = torch.zeros((3, rows, width), dtype=torch.int64)
    real = torch.arange(width)[None, :] < torch.tensor(kept, dtype=torch.int64)[:, None]
    out[:, real] = vals
    empty = [i for i, ln in enumerate(kept) if ln == 0]
    if empty:  # one unknown event (type 0, first-event gap) keeps the row valid
        out[0, empty, 0] = 1
        out[2, empty, 0] = 1
    lens_out = torch.tensor([ln or 1 for ln in kept], dtype=torch.int64)
    return _Encoded(SeqBatch(out[0], out[1], out[2], lens_out), real, ids, names)


def signed_log1p(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


SMALL_FEATURE_ROWS = 8  # fewer rows: the per-value loop beats the buffer's fixed cost


def feature_matrix(features: Sequence[dict[str, float]], names: Sequence[str]) -> torch.Tensor:
    """Raw feature values by name; a missing or non-finite value reads as 0."""
    if len(features) < SMALL_FEATURE_ROWS:
        return _feature_matrix_slow(features, names)
    buf = array("d")
    zeros = repeat(0.0)
    try:  # numbers throughout (the norm): one C-level pass per row
        for f in features:
            buf.extend(map(f.get, names, zeros))
    except TypeError:  # None, or something float() must parse
        return _feature_matrix_slow(features, names)
    if not buf:
        return torch.zeros((len(features), len(names)), dtype=torch.float32)
    x = torch.frombuffer(buf, dtype=torch.float64).view(len(features), len(names))
    return x.masked_fill(~torch.isfinite(x), 0.0).to(torch.float32)


def _feature_matrix_slow(features: Sequence[dict[str, float]], names: Sequence[str]
                         ) -> torch.Tensor:
    rows = []
    for f in features:
        row = []
        for n in names:
            v = f.get(n)
            fv = 0.0 if v is None else float(v)
            row.append(fv if math.isfinite(fv) else 0.0)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32).reshape(len(features), len(names))
