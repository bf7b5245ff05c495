"""A trained sequence net plus its item vocabulary, ranking items for user sequences."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import torch

from model.device import autocast_dtype
from model.encoding import bucket_length, encode_with_copy_ids
from model.nets import SeqRecConfig, SeqRecNet, build_recommender
from model.recommenders.base import Ranked
from model.types import SeqItem
from model.vocab import RESERVED, ItemVocab

__all__ = ["CPU_ROWS", "NEVER", "NeuralRecommender", "PREFIX_SLACK"]

NEVER = -60.0  # log-probability below which an item is not a candidate (copy floor is -69)
PREFIX_SLACK = 4  # sorted candidates per row beyond k + excluded that go to Python at first
# Rows per forward pass on a CPU. A pass's temporaries grow with its rows (~70 MB at 256
# rows: out of cache, and page-faulted afresh when the allocator hands memory back); its fixed
# cost (~2 ms of op dispatch) does not. 64 to 128 rows measured best.
CPU_ROWS = 128


class NeuralRecommender:
    """Serves a SeqRecNet: groups rows by padded length, masks padding, unknown and excluded
    items, returns the top k item strings with their logits as scores."""

    def __init__(self, net: SeqRecNet, vocab: ItemVocab,
                 device: torch.device | None = None) -> None:
        self.net = net.eval()
        self.vocab = vocab
        self.device = device or torch.device("cpu")
        self.net.to(self.device)
        self.method = net.kind
        self._amp = autocast_dtype(self.device)

    @property
    def max_len(self) -> int:
        return self.net.config.max_len

    def _amp_ctx(self) -> contextlib.AbstractContextManager[object]:
        if self._amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._amp)

    def logits(self, seqs: Sequence[Sequence[SeqItem]]) -> tuple[torch.Tensor, list[str]]:
        """(B, n_items + n_unknown) float32 log-probabilities over the whole table on the CPU
        (analysis and tests; serving uses `recommend`), and the strings of the batch's history
        items unknown to the vocabulary (columns n_items and up, reachable by copy only)."""
        n_items = self.net.config.n_items
        with torch.inference_mode():
            batch, copy_ids, unknown = encode_with_copy_ids(seqs, self.vocab, self.max_len,
                                                            n_items)
            total = n_items + len(unknown)
            logp = self.net.logits_last(batch.to(self.device), copy_ids.to(self.device), total)
            out = logp.float().cpu()
        return out, unknown

    def recommend(self, seqs: Sequence[Sequence[SeqItem]], k: int,
                  exclude: Sequence[Collection[str]]) -> list[Ranked]:
        """Top k per row from `SeqRecNet.topk_last` (no pass over the full table per row),
        in forward passes of rows padded alike, at most CPU_ROWS rows each on a CPU."""
        if not seqs:
            return []
        n_items = self.net.config.n_items
        batch, copy_ids, names = encode_with_copy_ids(seqs, self.vocab, self.max_len, n_items)
        want = k + max((len(e) for e in exclude), default=0)
        # rows padded alike share a forward pass; a short row in a long batch would cost
        # as much as a long one
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(batch.lengths.tolist()):
            groups.setdefault(bucket_length(n, self.max_len), []).append(i)
        out: list[Ranked] = [[] for _ in seqs]
        cuda = self.device.type == "cuda"
        with torch.inference_mode(), self._amp_ctx():
            for length, idx in groups.items():
                step = len(idx) if cuda else CPU_ROWS
                for s in range(0, len(idx), step):
                    part_idx = idx[s:s + step]
                    rows: slice | torch.Tensor = (slice(s, s + step) if len(groups) == 1
                                                  else torch.tensor(part_idx))
                    part, part_copy = batch.take(rows, length), copy_ids[rows, :length]
                    if cuda:
                        part, part_copy = part.pin_memory(), part_copy.pin_memory()
                    logp, cand = self.net.topk_last(
                        part.to(self.device, non_blocking=cuda), want,
                        part_copy.to(self.device, non_blocking=cuda))
                    ranked = self._ranked(logp.float(), cand, names,
                                          [exclude[i] for i in part_idx], k)
                    for i, r in zip(part_idx, ranked, strict=True):
                        out[i] = r
        return out

    def _ranked(self, logp: torch.Tensor, cand: torch.Tensor, names: list[str],
                exclude: Sequence[Collection[str]], k: int) -> list[Ranked]:
        """Best first, one entry per item, none at or below NEVER, no excluded or free-slot
        item, k at most. Only a prefix of each sorted row crosses into Python (the k best plus
        room for the excluded and repeated ones); a row that runs out of it short of k items
        is walked in full."""
        order = torch.argsort(logp, dim=1, descending=True, stable=True)
        full = order.shape[1]
        width = min(full, k + max((len(e) for e in exclude), default=0) + PREFIX_SLACK)
        head = order[:, :width]
        scores = logp.gather(1, head).cpu().tolist()
        ids = cand.gather(1, head).cpu().tolist()
        name = self._namer(names)
        out: list[Ranked] = []
        for row, excl in enumerate(exclude):
            ranked, short = _walk(scores[row], ids[row], name, excl, k)
            if short and width < full:
                ranked, _ = _walk(logp[row, order[row]].cpu().tolist(),
                                  cand[row, order[row]].cpu().tolist(), name, excl, k)
            out.append(ranked)
        return out

    def _namer(self, names: list[str]) -> Callable[[int], str | None]:
        """Id -> item string: the vocabulary's below n_items, the batch's unknown items above."""
        table = self.vocab.item_table()
        n_items = self.net.config.n_items
        n_table = min(n_items, len(table))

        def name(i: int) -> str | None:
            if RESERVED <= i < n_table:
                return table[i]
            return names[i - n_items] if i >= n_items else None
        return name

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        torch.save(state, directory / "weights.pt")
        cfg = {"kind": self.net.kind, "config": self.net.config.to_dict()}
        (directory / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        self.vocab.save(directory / "vocab.json")

    @classmethod
    def load(cls, directory: Path, device: torch.device | None = None) -> NeuralRecommender:
        cfg = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        net = build_recommender(str(cfg["kind"]), SeqRecConfig(**cfg["config"]))
        state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        return cls(net, ItemVocab.load(directory / "vocab.json"), device)


def _walk(scores: list[float], ids: list[int], name: Callable[[int], str | None],
          exclude: Collection[str], k: int) -> tuple[Ranked, bool]:
    """The ranked items from one row sorted best first; True when the row ended before k
    items and before a score at or below NEVER (there may be more beyond it)."""
    ranked: Ranked = []
    seen: set[int] = set()
    for s, i in zip(scores, ids, strict=True):
        if s <= NEVER or len(ranked) >= k:
            return ranked, False
        if i in seen:
            continue
        seen.add(i)
        item = name(i)
        if item is not None and item not in exclude:
            ranked.append((item, s))
    return ranked, len(ranked) < k
