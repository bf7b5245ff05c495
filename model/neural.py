"""A trained sequence net plus its item vocabulary, ranking items for user sequences."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Collection, Sequence
from pathlib import Path

import torch

from model.device import autocast_dtype
from model.encoding import bucket_length, encode_rows, seq_rows
from model.nets import SeqRecConfig, SeqRecNet, build_recommender
from model.recommender import Ranked
from model.types import SeqItem
from model.vocab import RESERVED, UNK, ItemVocab

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
        """(B, n_items + n_unknown) float32 log-probabilities on the CPU, and the strings of
        the batch's history items unknown to the vocabulary (columns n_items and up: they
        can only be re-consumed, through the copy head). Computed in length-bucket groups."""
        rows = [seq_rows(s, self.vocab, self.max_len) for s in seqs]
        n_items = self.net.config.n_items
        unknown: dict[str, int] = {}
        copy_rows: list[list[int]] = []
        for s, r in zip(seqs, rows, strict=True):
            tail = s[-len(r):] if r else ()
            copy_rows.append([i if i != UNK else
                              unknown.setdefault(e.item_id, n_items + len(unknown))
                              for (i, _, _), e in zip(r, tail, strict=True)])
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(bucket_length(max(1, len(r)), self.max_len), []).append(i)
        total = n_items + len(unknown)
        out = torch.empty((len(rows), total), dtype=torch.float32)
        cuda = self.device.type == "cuda"
        with torch.inference_mode(), self._amp_ctx():
            for length, idx in groups.items():
                batch = encode_rows([rows[i] for i in idx], self.max_len, pad_to=length)
                copy_ids = torch.zeros_like(batch.items)
                for j, i in enumerate(idx):
                    copy_ids[j, : len(copy_rows[i])] = torch.tensor(copy_rows[i])
                if cuda:
                    batch, copy_ids = batch.pin_memory(), copy_ids.pin_memory()
                logp = self.net.logits_last(batch.to(self.device, non_blocking=cuda),
                                            copy_ids.to(self.device, non_blocking=cuda), total)
                out[torch.tensor(idx)] = logp.float().cpu()
        return out, list(unknown)

    def recommend(self, seqs: Sequence[Sequence[SeqItem]], k: int,
                  exclude: Sequence[Collection[str]]) -> list[Ranked]:
        if not seqs:
            return []
        logits, unknown = self.logits(seqs)
        n_items = self.net.config.n_items
        local = {s: n_items + j for j, s in enumerate(unknown)}
        for row, ex in enumerate(exclude):
            ids = [i for i in self.vocab.ids(ex) if i >= RESERVED] + [
                local[s] for s in ex if s in local]
            if ids:
                logits[row, ids] = float("-inf")
        kk = min(k, logits.shape[1])
        top = torch.topk(logits, kk, dim=1)
        out: list[Ranked] = []
        for srow, irow in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            ranked: Ranked = []
            for s, i in zip(srow, irow, strict=True):
                item = self.vocab.item(i) if i < n_items else unknown[i - n_items]
                if item is not None and s > NEVER:
                    ranked.append((item, float(s)))
            out.append(ranked)
        return out

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
