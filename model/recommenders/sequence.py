"""The streaming sequence model: a GRU whose per-user state advances one event at a time."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from model.encoding import encode_sequences, gap_bucket, type_index
from model.errors import DataError
from model.nets import SeqRecConfig, build_recommender
from model.nets.base import top_k_rows
from model.nets.gru import GRURec
from model.types import SeqItem
from model.vocab import RESERVED, ItemVocab


class SeqState(NamedTuple):
    """One user's sequence encoding: what the worker may keep with the user's state.

    `hidden` (layers, d) is the GRU state after `events` events, the last at `last_ts_ms`;
    `version` names the model that computed it (a state of another version is re-encoded
    from the raw history, never mixed with this model's weights).
    """

    hidden: torch.Tensor
    last_ts_ms: int | None
    events: int
    version: str


class SequenceModel:
    """A GRURec and its item vocabulary, read by the hybrid: re-encoded from a history, or
    advanced by `step` per event (the cost of an event does not grow with the history)."""

    def __init__(self, net: GRURec, vocab: ItemVocab, version: str = "",
                 categories: dict[str, int] | None = None) -> None:
        self.net = net.eval()
        self.vocab = vocab
        self.version = version
        # category -> the id its embedding has (nets with categories): new items join theirs
        self.categories = categories or {}
        self._table: tuple[tuple[tuple[int, int, torch.Size], ...], torch.Tensor] | None = None

    @property
    def max_len(self) -> int:
        return self.net.config.max_len

    @property
    def n_items(self) -> int:
        return self.net.config.n_items

    def encode(self, seqs: Sequence[Sequence[SeqItem]]) -> torch.Tensor:
        """(layers, B, d) states after each history's last `max_len` events (re-encoded)."""
        batch = encode_sequences(seqs, self.vocab, self.max_len)
        with torch.inference_mode():
            return self.net.encode_state(batch)

    def init_state(self) -> SeqState:
        with torch.inference_mode():
            return SeqState(self.net.init_state(1)[:, 0], None, 0, self.version)

    def step(self, state: SeqState, item: str, event_type: str, ts_ms: int) -> SeqState:
        """The state after one more event: one GRU step (see `step_batch` for many users)."""
        return self.step_batch([state], [SeqItem(item, event_type, ts_ms)])[0]

    def step_batch(self, states: Sequence[SeqState], events: Sequence[SeqItem]
                   ) -> list[SeqState]:
        """Each user's state advanced by its one new event, in one batched GRU step."""
        if len(states) != len(events):
            raise DataError("one event per state")
        if not states:
            return []
        items = torch.tensor(self.vocab.ids([e.item_id for e in events]), dtype=torch.int64)
        types = torch.tensor([type_index(e.event_type) for e in events], dtype=torch.int64)
        gaps = torch.tensor([gap_bucket(None if s.last_ts_ms is None else e.ts_ms - s.last_ts_ms)
                             for s, e in zip(states, events, strict=True)], dtype=torch.int64)
        with torch.inference_mode():
            h = self.net.step(torch.stack([s.hidden for s in states], 1), items, types, gaps)
        # views of one tensor: no copy per user (state_to_bytes copies what it writes)
        return [SeqState(hi, e.ts_ms, s.events + 1, self.version)
                for hi, s, e in zip(h.unbind(1), states, events, strict=True)]

    def states_of(self, seqs: Sequence[Sequence[SeqItem]]) -> list[SeqState]:
        """Users' states re-encoded from their histories (the last `max_len` events each):
        what a state of another model version, or none, is replaced by."""
        if not seqs:
            return []
        h = self.encode([s or [SeqItem("", "view", 0)] for s in seqs])
        return [SeqState(h[:, i].clone(), s[-1].ts_ms, min(len(s), self.max_len), self.version)
                if s else self.init_state() for i, s in enumerate(seqs)]

    def readout(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, d) from (layers, B, d) states."""
        with torch.inference_mode():
            return self.net.readout(hidden)

    def scores(self, h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, C) next-item logits of vocabulary ids (B, C) for readouts h (B, d)."""
        net = self.net
        with torch.inference_mode():
            emb = net.item_vectors(ids)
            return torch.baddbmm(net.item_bias[ids][:, :, None], emb, h[:, :, None])[..., 0]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(B, n_items) next-item logits over the whole table for readouts h (B, d); the
        reserved ids (padding, unknown) at -inf."""
        net = self.net
        with torch.inference_mode():
            out = torch.addmm(net.item_bias, h, self.item_table().T)
            out[:, :RESERVED] = float("-inf")
            return out

    def item_table(self) -> torch.Tensor:
        """The net's item_table(), kept while the weights it is built from are unchanged (an
        optimiser step or a vocabulary growth changes their version or shape): with category
        embeddings it is a sum over the whole table, every batch otherwise."""
        net = self.net
        parts = [net.item_emb.weight]
        if net.cat_emb is not None and net.item_cat is not None:
            parts += [net.cat_emb.weight, net.item_cat]
        key = tuple((id(t), t._version, t.shape) for t in parts)
        if self._table is None or self._table[0] != key:
            with torch.inference_mode():
                self._table = (key, net.item_table())
        return self._table[1]

    def top_of(self, logits: torch.Tensor, k: int) -> torch.Tensor:
        """(B, k) vocabulary ids of the k highest of `logits` (B, n_items)."""
        k = min(k, self.n_items - RESERVED)
        with torch.inference_mode():
            return top_k_rows(logits, k)[1]

    def top(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """(B, k) vocabulary ids of the k highest logits over the whole table."""
        return self.top_of(self.logits(h), k)

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        torch.save(state, directory / "weights.pt")
        cfg = {"kind": self.net.kind, "config": self.net.config.to_dict(),
               "categories": self.categories}
        (directory / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
        self.vocab.save(directory / "vocab.json")

    @classmethod
    def load(cls, directory: Path, version: str = "") -> SequenceModel:
        cfg = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        net = build_recommender(str(cfg["kind"]), SeqRecConfig(**cfg["config"]))
        if not isinstance(net, GRURec):
            raise DataError(f"{directory}: the streaming sequence model is a GRU, not "
                            f"{cfg['kind']!r}")
        state = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        return cls(net, ItemVocab.load(directory / "vocab.json"), version,
                   {str(c): int(i) for c, i in cfg.get("categories", {}).items()})


_HEAD = struct.Struct("<qIHH")  # last_ts_ms (-1: none), events, layers, version length


def state_to_bytes(state: SeqState) -> bytes:
    """A state as bytes for a table or a changelog: a fixed header, the version, then the
    hidden state as little-endian float32 (a few hundred bytes at the default size)."""
    version = state.version.encode()
    hidden = state.hidden.detach().to("cpu", torch.float32).contiguous()
    head = _HEAD.pack(-1 if state.last_ts_ms is None else state.last_ts_ms, state.events,
                      hidden.shape[0], len(version))
    return head + version + hidden.numpy().tobytes()


def state_from_bytes(blob: bytes) -> SeqState:
    """The state `state_to_bytes` wrote; DataError when the bytes are not one."""
    try:
        ts, events, layers, n = _HEAD.unpack_from(blob)
        version = blob[_HEAD.size: _HEAD.size + n].decode()
        body = blob[_HEAD.size + n:]
        hidden = torch.frombuffer(bytearray(body), dtype=torch.float32).view(layers, -1)
    except (struct.error, UnicodeDecodeError, RuntimeError, ValueError) as e:
        raise DataError(f"not a sequence state ({e})") from None
    return SeqState(hidden, None if ts < 0 else ts, events, version)
