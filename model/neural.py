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
from model.vocab import RESERVED, ItemVocab


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

    def logits(self, seqs: Sequence[Sequence[SeqItem]]) -> torch.Tensor:
        """(B, n_items) float32 logits on the CPU, computed in length-bucket groups."""
        rows = [seq_rows(s, self.vocab, self.max_len) for s in seqs]
        groups: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(bucket_length(max(1, len(r)), self.max_len), []).append(i)
        out = torch.empty((len(rows), self.net.config.n_items), dtype=torch.float32)
        cuda = self.device.type == "cuda"
        with torch.inference_mode(), self._amp_ctx():
            for length, idx in groups.items():
                batch = encode_rows([rows[i] for i in idx], self.max_len, pad_to=length)
                if cuda:
                    batch = batch.pin_memory()
                logits = self.net.logits_last(batch.to(self.device, non_blocking=cuda))
                out[torch.tensor(idx)] = logits.float().cpu()
        return out

    def recommend(self, seqs: Sequence[Sequence[SeqItem]], k: int,
                  exclude: Sequence[Collection[str]]) -> list[Ranked]:
        if not seqs:
            return []
        logits = self.logits(seqs)
        logits[:, :RESERVED] = float("-inf")
        for row, ex in enumerate(exclude):
            ids = [i for i in self.vocab.ids(ex) if i >= RESERVED]
            if ids:
                logits[row, ids] = float("-inf")
        kk = min(k, logits.shape[1])
        top = torch.topk(logits, kk, dim=1)
        out: list[Ranked] = []
        for srow, irow in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            ranked: Ranked = []
            for s, i in zip(srow, irow, strict=True):
                item = self.vocab.item(i)
                if item is not None and s != float("-inf"):
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
