"""The hybrid recommender: candidates from counts (and the sequence model's top items), ranked
by a learned ranker over count features and the streaming sequence model's scores."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from model.errors import DataError
from model.nets.ranker import RankerConfig, RankerNet
from model.recommenders.base import HYBRID_METHODS, Ranked
from model.recommenders.candidates import COUNT_FEATURES, Candidates, CandidateTables, Encoded
from model.recommenders.sequence import SeqState, SequenceModel, state_from_bytes
from model.types import SeqItem
from model.vocab import RESERVED, UNK

SEQ_FEATURES: tuple[str, ...] = ("seq_known", "seq_score", "seq_logprob", "seq_source")
HYBRID, WITHOUT_SEQUENCE = HYBRID_METHODS
UNKNOWN_SCORE = -10.0  # relative score of a candidate the sequence model never saw


def _readable(blob: bytes | SeqState | None) -> SeqState | None:
    if isinstance(blob, SeqState):
        return blob
    if not blob:
        return None
    try:
        return state_from_bytes(blob)
    except DataError:
        return None


class Batch(NamedTuple):
    """Everything the ranker reads for a batch of histories."""

    enc: Encoded
    cand: Candidates
    x: torch.Tensor  # (B, C, F) ranker inputs


class HybridRecommender:
    """Two stages: `CandidateTables.generate` (plus the sequence model's `top_k` items), then
    `RankerNet` over COUNT_FEATURES (+ SEQ_FEATURES with a sequence model).

    Without a sequence model it is `hybrid_without_sequence`: the same candidates from counts,
    a ranker trained on count features alone.
    """

    def __init__(self, tables: CandidateTables, ranker: RankerNet,
                 seq: SequenceModel | None = None, top_k: int = 50) -> None:
        self.tables = tables
        self.ranker = ranker.eval()
        self.seq = seq
        self.top_k = top_k if seq is not None else 0
        self.method = HYBRID if seq is not None else WITHOUT_SEQUENCE
        self._maps: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def feature_names(with_sequence: bool) -> tuple[str, ...]:
        return (*COUNT_FEATURES, *SEQ_FEATURES) if with_sequence else COUNT_FEATURES

    def _id_maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(table id -> vocabulary id, UNK where unknown; vocabulary id -> table id, 0 where
        the table lacks it), built once per pair of tables and vocabulary."""
        if self._maps is None:
            assert self.seq is not None
            vocab, tables = self.seq.vocab, self.tables
            to_vocab = torch.tensor([UNK, *vocab.ids(tables.items)], dtype=torch.int64)
            to_table = torch.zeros(self.seq.n_items, dtype=torch.int64)
            for i in vocab.known_ids():
                name = vocab.item(i)
                if name is not None and i < len(to_table):
                    to_table[i] = tables.index.get(name, 0)
            self._maps = (to_vocab, to_table)
        return self._maps

    def sequence_changed(self) -> None:
        """Call after the sequence model's vocabulary grew (fine-tuning): ids are re-mapped."""
        self._maps = None

    def batch(self, seqs: Sequence[Sequence[SeqItem]], exclude: Sequence[Collection[str]],
              states: Sequence[SeqState | None] | None = None,
              categories: Sequence[str | None] | None = None) -> Batch:
        """Candidates and ranker inputs; `states` may hold each user's cached sequence state
        (None, or one of another version: re-encoded from the history)."""
        enc = self.tables.encode(seqs, exclude, categories)
        if self.seq is None:
            cand = self.tables.generate(enc)
            return Batch(enc, cand, cand.features)
        h = self.seq.readout(self._hidden(seqs, states))
        to_vocab, to_table = self._id_maps()
        # the whole table's logits once: the top items are candidates, and every candidate's
        # score is read from them (no second pass over the candidates' embeddings)
        logits = self.seq.logits(h) if self.top_k else None
        extra = None if logits is None else to_table[self.seq.top_of(logits, self.top_k)]
        cand = self.tables.generate(enc, extra)
        vid = torch.where(cand.ids <= self.tables.n, to_vocab[cand.ids.clamp(max=self.tables.n)],
                          UNK)
        known = (vid >= RESERVED) & cand.mask
        s = self.seq.scores(h, vid) if logits is None else logits.gather(1, vid)
        s_known = s.masked_fill(~known, float("-inf"))
        mx = s_known.amax(1, keepdim=True).clamp_min(-1e4)
        lse = torch.logsumexp(s_known, 1, keepdim=True).clamp_min(-1e4)
        rel = torch.where(known, s - mx, UNKNOWN_SCORE)
        logp = torch.where(known, s - lse, UNKNOWN_SCORE)
        source = cand.extra_rank  # 1 / (1 + rank) among the sequence model's top items
        seq_x = torch.stack([known.float(), rel, logp, source], 2) * cand.mask[..., None]
        return Batch(enc, cand, torch.cat([cand.features, seq_x], 2))

    def _hidden(self, seqs: Sequence[Sequence[SeqItem]],
                states: Sequence[SeqState | None] | None) -> torch.Tensor:
        assert self.seq is not None
        if states is None:
            return self.seq.encode(seqs)
        version = self.seq.version
        stale = [i for i, s in enumerate(states) if s is None or s.version != version]
        # no state, or one of another version: re-encoded from the history
        fresh = self.seq.encode([seqs[i] for i in stale]) if stale else None
        where = {i: j for j, i in enumerate(stale)}
        cols = []
        for i, s in enumerate(states):
            j = where.get(i)
            if s is not None and j is None:
                cols.append(s.hidden)
            else:
                assert fresh is not None and j is not None
                cols.append(fresh[:, j])
        return torch.stack(cols, 1)

    def advance(self, seqs: Sequence[Sequence[SeqItem]],
                blobs: Sequence[bytes | SeqState | None]) -> list[SeqState]:
        """Each user's sequence state after the trigger (each history's last event): one GRU
        step from a cached state (`state_to_bytes`, or the SeqState itself) of this model
        version that ended at the event before the trigger; a missing, empty, unreadable,
        stale or newer state, or one that ended elsewhere (events it never saw: a stretch
        served by another model, a late event), is re-encoded from the history instead (what
        follows a hot swap). A user's first event steps from the initial state, which is the
        re-encode of a one-event history at the cost of a step."""
        seq = self.seq
        if seq is None:
            raise DataError("hybrid_without_sequence keeps no sequence state")
        steppable: list[tuple[int, SeqState]] = []
        start: SeqState | None = None
        for i, (hist, blob) in enumerate(zip(seqs, blobs, strict=True)):
            st = _readable(blob)
            if (st is not None and st.version == seq.version and len(hist) > 1
                    and st.last_ts_ms == hist[-2].ts_ms):
                steppable.append((i, st))
            elif len(hist) == 1:  # the user's first event: one step from the initial state
                start = start or seq.init_state()  # is what a re-encode computes, cheaper
                steppable.append((i, start))
        out: list[SeqState | None] = [None] * len(seqs)
        stepped = seq.step_batch([st for _, st in steppable], [seqs[i][-1] for i, _ in steppable])
        for (i, _), st in zip(steppable, stepped, strict=True):
            out[i] = st
        rest = [i for i, st in enumerate(out) if st is None]
        if rest:
            for i, st in zip(rest, seq.states_of([seqs[i] for i in rest]), strict=True):
                out[i] = st
        return [st for st in out if st is not None]

    def scores(self, b: Batch) -> torch.Tensor:
        """(B, C) ranker scores, -inf where there is no candidate."""
        with torch.inference_mode():
            s: torch.Tensor = self.ranker(b.x)
            return s.masked_fill(~b.cand.mask, float("-inf"))

    def recommend(self, seqs: Sequence[Sequence[SeqItem]], k: int,
                  exclude: Sequence[Collection[str]],
                  states: Sequence[SeqState | None] | None = None) -> list[Ranked]:
        if not seqs:
            return []
        b = self.batch(seqs, exclude, states)
        s = self.scores(b)
        top = torch.topk(s, min(k, s.shape[1]), 1)
        vals, idx = top.values.tolist(), b.cand.ids.gather(1, top.indices).tolist()
        # CandidateTables.name inlined: this runs for every item of every row
        items, n, local, none = self.tables.items, self.tables.n, b.enc.names, float("-inf")
        return [[(items[i - 1] if i <= n else local[i - n - 1], v)
                 for v, i in zip(vr, ir, strict=True) if v > none]
                for vr, ir in zip(vals, idx, strict=True)]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.tables.save(directory / "tables.pt")
        torch.save({k: v.detach().cpu() for k, v in self.ranker.state_dict().items()},
                   directory / "ranker.pt")
        meta = {"method": self.method, "top_k": self.top_k,
                "ranker": self.ranker.config.to_dict()}
        (directory / "hybrid.json").write_text(json.dumps(meta), encoding="utf-8")
        if self.seq is not None:
            self.seq.save(directory / "sequence")

    @classmethod
    def load(cls, directory: Path) -> HybridRecommender:
        meta = json.loads((directory / "hybrid.json").read_text(encoding="utf-8"))
        ranker = RankerNet(RankerConfig(**meta["ranker"]))
        ranker.load_state_dict(torch.load(directory / "ranker.pt", weights_only=True))
        seq = None
        if meta["method"] == HYBRID:
            if not (directory / "sequence").is_dir():
                raise DataError(f"{directory}: a hybrid without its sequence model")
            seq = SequenceModel.load(directory / "sequence")
        return cls(CandidateTables.load(directory / "tables.pt"), ranker, seq,
                   int(meta["top_k"]))
