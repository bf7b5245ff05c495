"""A trained sequence net plus its item vocabulary, ranking items for user sequences."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection, Sequence
from pathlib import Path

import torch

from model.device import autocast_dtype
from model.encoding import SeqBatch, bucket_length, encode_rows, seq_rows
from model.nets import SeqRecConfig, SeqRecNet, build_recommender
from model.recommender import Ranked
from model.types import SeqItem
from model.vocab import UNK, ItemVocab

NEVER = -60.0  # log-probability below which an item is not a candidate (copy floor is -69)


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
        rows = [seq_rows(s, self.vocab, self.max_len) for s in seqs]
        n_items = self.net.config.n_items
        unknown: dict[str, int] = {}
        copy_rows = [self._copy_row(s, r, unknown, n_items) for s, r in zip(seqs, rows,
                                                                             strict=True)]
        total = n_items + len(unknown)
        out = torch.empty((len(rows), total), dtype=torch.float32)
        with torch.inference_mode():
            length = bucket_length(max(1, max(len(r) for r in rows)), self.max_len)
            batch, copy_ids = self._batch(rows, copy_rows, length)
            logp = self.net.logits_last(batch.to(self.device), copy_ids.to(self.device), total)
            out[:] = logp.float().cpu()
        return out, list(unknown)

    def recommend(self, seqs: Sequence[Sequence[SeqItem]], k: int,
                  exclude: Sequence[Collection[str]]) -> list[Ranked]:
        """Top k per row from `SeqRecNet.topk_last` (no pass over the full table per row)."""
        if not seqs:
            return []
        rows = [seq_rows(s, self.vocab, self.max_len) for s in seqs]
        n_items = self.net.config.n_items
        unknown: dict[str, int] = {}
        copy_rows = [self._copy_row(s, r, unknown, n_items) for s, r in zip(seqs, rows,
                                                                             strict=True)]
        names = list(unknown)
        want = k + max((len(e) for e in exclude), default=0)
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(bucket_length(max(1, len(r)), self.max_len), []).append(i)
        out: list[Ranked] = [[] for _ in rows]
        cuda = self.device.type == "cuda"
        with torch.inference_mode(), self._amp_ctx():
            for length, idx in groups.items():
                batch, copy_ids = self._batch([rows[i] for i in idx],
                                              [copy_rows[i] for i in idx], length)
                if cuda:
                    batch, copy_ids = batch.pin_memory(), copy_ids.pin_memory()
                logp, cand = self.net.topk_last(batch.to(self.device, non_blocking=cuda), want,
                                                copy_ids.to(self.device, non_blocking=cuda))
                order = torch.argsort(logp.float(), dim=1, descending=True, stable=True)
                scores = logp.float().gather(1, order).cpu().tolist()
                ids = cand.gather(1, order).cpu().tolist()
                for j, i in enumerate(idx):
                    out[i] = self._ranked(scores[j], ids[j], names, exclude[i], k)
        return out

    def _ranked(self, scores: list[float], ids: list[int], names: list[str],
                exclude: Collection[str], k: int) -> Ranked:
        n_items = self.net.config.n_items
        ranked: Ranked = []
        seen: set[int] = set()
        for s, i in zip(scores, ids, strict=True):
            if s <= NEVER or len(ranked) >= k:
                break
            if i in seen:
                continue
            seen.add(i)
            item = self.vocab.item(i) if i < n_items else names[i - n_items]
            if item is not None and item not in exclude:
                ranked.append((item, s))
        return ranked

    @staticmethod
    def _copy_row(seq: Sequence[SeqItem], row: list[tuple[int, int, int]],
                  unknown: dict[str, int], n_items: int) -> list[int]:
        """Table ids, with batch-local ids >= n_items for unknown items (copy only)."""
        tail = seq[-len(row):] if row else ()
        return [i if i != UNK else unknown.setdefault(e.item_id, n_items + len(unknown))
                for (i, _, _), e in zip(row, tail, strict=True)]

    def _batch(self, rows: list[list[tuple[int, int, int]]], copy_rows: list[list[int]],
               length: int) -> tuple[SeqBatch, torch.Tensor]:
        batch = encode_rows(rows, self.max_len, pad_to=length)
        copy_ids = torch.tensor([c + [0] * (length - len(c)) if c else [1] + [0] * (length - 1)
                                 for c in copy_rows], dtype=torch.int64)
        return batch, copy_ids.reshape(len(rows), length)

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
