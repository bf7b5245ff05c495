"""Turn user event sequences and feature dicts into padded tensors the nets read."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model.types import EVENT_TYPE_INDEX, EVENT_TYPES, SeqItem
from model.vocab import ItemVocab

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


def encode_sequences(seqs: Sequence[Sequence[SeqItem]], vocab: ItemVocab, max_len: int,
                     pad_to: int | None = None) -> SeqBatch:
    return encode_rows([seq_rows(s, vocab, max_len) for s in seqs], max_len, pad_to)


def signed_log1p(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(torch.abs(x))


def feature_matrix(features: Sequence[dict[str, float]], names: Sequence[str]) -> torch.Tensor:
    """Raw feature values by name; a missing or non-finite value reads as 0."""
    rows = []
    for f in features:
        row = []
        for n in names:
            v = f.get(n)
            fv = 0.0 if v is None else float(v)
            row.append(fv if math.isfinite(fv) else 0.0)
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32).reshape(len(features), len(names))
