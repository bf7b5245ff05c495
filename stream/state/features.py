"""Pure per-user rolling feature state: event-time tiled windows, sessions, dedupe, TTL."""

from __future__ import annotations

import base64
import bisect
import hashlib
import sys
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple, Protocol

import orjson

from model.types import EVENT_TYPE_INDEX, EVENT_TYPES, SeqItem
from stream.errors import StateError
from stream.settings import Settings, window_label

_KMV_K = 256  # distinct counts are exact below this many, estimated (k-1)/max above
_MAX_KEYS_24H = 256  # distinct devices / IPs remembered per user
_DAY_MS = 86_400_000
_HOUR_MS = 3_600_000
# 2: sequence entries as [item, type name, ts]; window rows carry min tile
# 3: event-id hashes and distinct-count sketches as base64 of packed little-endian uint64;
#    the sequence by column: [[items], [types], [ts]]; an optional 20th field (issue 17): the
#    sequence model's state for this user (base64 of model.recommenders.sequence's bytes),
#    left out while none is kept, so states of workers serving no hybrid stay as they were
_STATE_VERSION = 3
_FIELDS = 19  # without the optional sequence-model state
_ZERO5 = (0.0, 0.0, 0.0, 0.0, 0.0)


class EventLike(Protocol):
    """The fields of an event the feature state reads (stream.schemas.Event has them)."""

    @property
    def event_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def item_id(self) -> str: ...
    @property
    def ts(self) -> int: ...
    @property
    def category(self) -> str | None: ...
    @property
    def price(self) -> float | None: ...
    @property
    def quantity(self) -> int | None: ...
    @property
    def device_id(self) -> str | None: ...
    @property
    def ip(self) -> str | None: ...
    @property
    def session_id(self) -> str | None: ...


def _h64(text: str) -> int:
    """Stable 64-bit hash (Python's hash() is salted per process, so it cannot be stored)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class FeatureConfig:
    """The feature settings, decoupled from Settings so unit tests can build one directly."""

    windows_s: tuple[int, ...] = (60, 3600, 86400)
    window_buckets: int = 12
    allowed_lateness_s: int = 60
    session_gap_s: int = 1800
    user_ttl_s: int = 7 * 86400
    sequence_length: int = 50
    dedupe_ids: int = 1000

    @classmethod
    def from_settings(cls, s: Settings) -> FeatureConfig:
        return cls(
            windows_s=tuple(sorted(s.windows_s)), window_buckets=s.window_buckets,
            allowed_lateness_s=s.allowed_lateness_s, session_gap_s=s.session_gap_s,
            user_ttl_s=s.user_ttl_s, sequence_length=s.sequence_length,
            dedupe_ids=s.dedupe_ids,
        )

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(window_label(w) for w in self.windows_s)

    # cached_property: read per event, and a frozen dataclass re-hashes itself on every
    # lookup in an outside cache
    @cached_property
    def feature_names(self) -> tuple[tuple[int, tuple[str, ...], float, bool], ...]:
        """Per window: (index, names of its 4 counts + spend + purchase rate, hours, is 1h)."""
        return tuple(
            (w, tuple(f"count_{t}_{label}" for t in EVENT_TYPES)
             + (f"spend_{label}", f"purchase_rate_{label}"),
             self.windows_s[w] / 3600, self.windows_s[w] == 3600)
            for w, label in enumerate(self.labels))

    @cached_property
    def produced_names(self) -> frozenset[str]:
        """Every name UserState.numeric_features fills: the features a served model may read
        (model.features.check_features refuses one that reads others)."""
        names = {"events_total", *(f"count_{t}" for t in EVENT_TYPES), "session_length",
                 "session_duration_s", "distinct_items", "distinct_categories",
                 "distinct_devices_24h", "distinct_ips_24h", "gap_s", "price", "new_device",
                 "new_ip"}
        for _, window, _, is_hour in self.feature_names:
            names.update(window)
            if is_hour:
                names.update(("cart_to_view_1h", "purchase_to_view_1h"))
        return frozenset(names)

    def tile_ms(self, w: int) -> int:
        return max(1, self.windows_s[w] * 1000 // self.window_buckets)

    @cached_property
    def tiles_ms(self) -> tuple[int, ...]:
        """tile_ms of every window (apply() needs them per event)."""
        return tuple(self.tile_ms(w) for w in range(len(self.windows_s)))


class ApplyResult(NamedTuple):
    """What applying one event did: duplicates change nothing; late events skip windows."""

    duplicate: bool
    late: bool
    expired_reset: bool = False


# apply() runs per event: hand out shared results rather than build one each time
_RESULTS = {(d, la, r): ApplyResult(d, la, r)
            for d in (False, True) for la in (False, True) for r in (False, True)}


class UserState:
    """Everything lamstream remembers about one user, kept small enough to write per batch.

    Windows are event-time and tiled: window w keeps `window_buckets` tiles of
    windows_s[w] / window_buckets each, ending at the tile holding the user's latest event
    time, so a window count covers between (W - tile) and W of event time. No per-event lists
    are kept for windows; only the last `sequence_length` events are kept as a sequence.
    """

    __slots__ = (
        "user_id", "total", "counts", "spend_total", "first_ts", "max_ts", "seen_ms",
        "tiles", "seq", "sess", "items", "cats", "devices", "ips", "ids", "late", "dups",
        "prev_gap_ms", "new_device", "new_ip", "_idset", "seq_state",
    )

    def __init__(self, user_id: str, n_windows: int) -> None:
        self.user_id = user_id
        self.total = 0
        self.counts = [0, 0, 0, 0]
        self.spend_total = 0.0
        self.first_ts = -1
        self.max_ts = -1
        self.seen_ms = 0
        # per window: {tile index: [view, click, add_to_cart, purchase, spend]}
        self.tiles: list[dict[int, list[float]]] = [{} for _ in range(n_windows)]
        self.seq: list[SeqItem] = []  # sorted by event time, newest last
        # [session number, start ts, last ts, length, external session id or ""]
        self.sess: list[Any] = [0, -1, -1, 0, ""]
        self.items: array[int] = array("Q")  # KMV sketch (sorted smallest hashes)
        self.cats: array[int] = array("Q")
        self.devices: dict[str, int] = {}  # hashed device id -> last event ts
        self.ips: dict[str, int] = {}
        self.ids: array[int] = array("Q")  # hashes of the latest event ids, oldest first
        self._idset: set[int] | None = None
        self.late = 0
        self.dups = 0
        self.prev_gap_ms = -1
        # the served sequence model's state after the user's latest event (bytes that name the
        # model version; model.types.Prediction.seq_state), None while no hybrid serves
        self.seq_state: bytes | None = None
        # transient: about the event just applied, not persisted
        self.new_device = False
        self.new_ip = False

    # -- persistence ----------------------------------------------------------------
    def to_bytes(self) -> bytes:
        fields = [
            _STATE_VERSION, self.user_id, self.total, self.counts, self.spend_total,
            self.first_ts, self.max_ts, self.seen_ms,
            [[[k, *v] for k, v in t.items()] for t in self.tiles],
            list(zip(*self.seq, strict=True)), self.sess, _pack(self.items), _pack(self.cats),
            self.devices, self.ips,
            _pack(self.ids),
            self.late, self.dups, self.prev_gap_ms,
        ]
        if self.seq_state is not None:
            fields.append(base64.b64encode(self.seq_state).decode("ascii"))
        return orjson.dumps(fields)

    @classmethod
    def from_bytes(cls, raw: bytes, n_windows: int) -> UserState:
        d = orjson.loads(raw)
        if not isinstance(d, list) or d[0] != _STATE_VERSION:
            raise StateError("unknown user state format")
        st = cls.__new__(cls)  # every field is set below: skip __init__'s empty containers
        st.seq_state = base64.b64decode(d.pop()) if len(d) > _FIELDS else None
        (_, st.user_id, st.total, st.counts, st.spend_total, st.first_ts, st.max_ts,
         st.seen_ms, tiles, seq, st.sess, items, cats, st.devices, st.ips, ids,
         st.late, st.dups, st.prev_gap_ms) = d
        st.items, st.cats, st.ids = _unpack(items), _unpack(cats), _unpack(ids)
        st.tiles = [{row[0]: row[1:] for row in tiles[w]} if w < len(tiles) else {}
                    for w in range(n_windows)]
        new = tuple.__new__  # NamedTuple's own constructor is several times slower
        st.seq = [new(SeqItem, e) for e in zip(*seq, strict=True)]  # by column
        st._idset = None
        st.new_device = st.new_ip = False
        return st

    # -- updates ------------------------------------------------------------------
    def expired(self, cfg: FeatureConfig, now_ms: int) -> bool:
        return self.seen_ms > 0 and now_ms - self.seen_ms > cfg.user_ttl_s * 1000

    def apply(self, ev: EventLike, cfg: FeatureConfig, now_ms: int) -> ApplyResult:
        """Fold one event into the state. now_ms is processing time (for the TTL only)."""
        reset = False
        if self.expired(cfg, now_ms):
            self.__init__(self.user_id, len(cfg.windows_s))  # type: ignore[misc]
            reset = True
        h = _h64(ev.event_id)
        idset = self._idset
        if idset is None:
            idset = self._idset = set(self.ids)
        if h in idset:
            self.dups += 1
            return _RESULTS[True, False, reset]
        self.ids.append(h)
        idset.add(h)
        if len(self.ids) > cfg.dedupe_ids:
            drop = len(self.ids) - cfg.dedupe_ids
            idset.difference_update(self.ids[:drop])
            del self.ids[:drop]

        t = EVENT_TYPE_INDEX[ev.type]
        ts = ev.ts
        spend = 0.0
        if t == 3 and ev.price is not None:
            spend = ev.price * (ev.quantity or 1)
        self.seen_ms = now_ms
        self.total += 1
        self.counts[t] += 1
        self.spend_total += spend
        prev_max = self.max_ts
        self.prev_gap_ms = ts - prev_max if prev_max >= 0 and ts >= prev_max else -1
        if self.first_ts < 0 or ts < self.first_ts:
            self.first_ts = ts
        late = prev_max >= 0 and ts < prev_max - cfg.allowed_lateness_s * 1000
        if late:
            self.late += 1
        if ts > prev_max:
            self.max_ts = ts

        if not late:
            for w, tile_ms in enumerate(cfg.tiles_ms):
                self._add_to_window(w, tile_ms, cfg.window_buckets, ts, t, spend)

        # sequence: sorted by event time, newest last, bounded
        entry = SeqItem(ev.item_id, ev.type, ts)
        if not self.seq or ts >= self.seq[-1][2]:
            self.seq.append(entry)
        else:
            pos = bisect.bisect_right([e[2] for e in self.seq], ts)
            self.seq.insert(pos, entry)
        if len(self.seq) > cfg.sequence_length:
            del self.seq[: len(self.seq) - cfg.sequence_length]

        self._session(ev, cfg)
        _kmv_add(self.items, _h64(ev.item_id))
        if ev.category:
            _kmv_add(self.cats, _h64(ev.category))
        self.new_device = _touch(self.devices, ev.device_id, ts, self.max_ts)
        self.new_ip = _touch(self.ips, ev.ip, ts, self.max_ts)
        return _RESULTS[False, late, reset]

    def _add_to_window(self, w: int, tile_ms: int, buckets: int, ts: int, t: int,
                       spend: float) -> None:
        """Count the event in its tile, then drop tiles that fell out of the window.

        Tiles are pruned eagerly whenever the user's latest event time moves, so the retained
        tiles are exactly the window ending at max_ts and their sum is kept in row -1.
        """
        tiles = self.tiles[w]
        oldest = self.max_ts // tile_ms - buckets
        idx = ts // tile_ms
        # row -1 holds the window's sums and, at [5], the lowest tile index it contains, so
        # the common case (nothing fell out of the window) costs no scan of the tiles
        total = tiles.get(-1)
        if total is None:
            total = tiles[-1] = [0, 0, 0, 0, 0.0, idx]
        elif total[5] <= oldest:
            stale = [k for k in tiles if 0 <= k <= oldest]
            for k in stale:
                del tiles[k]
            # re-sum what is left rather than subtract what left: subtracting float spend
            # drifts (an empty window read 4e-16 spend). Runs once per tile boundary.
            total[:] = [0, 0, 0, 0, 0.0, idx]
            for k, row in tiles.items():
                if k >= 0:
                    for i in range(5):
                        total[i] += row[i]
                    if k < total[5]:
                        total[5] = k
        if idx > oldest:
            found = tiles.get(idx)
            if found is None:
                row = tiles[idx] = [0, 0, 0, 0, 0.0]
                if idx < total[5]:
                    total[5] = idx
            else:
                row = found
            row[t] += 1
            row[4] += spend
            total[t] += 1
            total[4] += spend

    def _session(self, ev: EventLike, cfg: FeatureConfig) -> None:
        num, start, last, length, ext = self.sess
        ts = ev.ts
        gap = cfg.session_gap_s * 1000
        if ev.session_id:
            if ev.session_id != ext:
                if num > 0 and ts < start:
                    return  # an older session's straggler: leave the current one alone
                self.sess = [num + 1, ts, ts, 1, ev.session_id]
                return
        elif num > 0 and ts < start - gap:
            return  # belongs to an older session
        if num == 0 or (not ev.session_id and ts > last + gap):
            self.sess = [num + 1, ts, ts, 1, ev.session_id or ""]
            return
        self.sess = [num, min(start, ts), max(last, ts), length + 1, ext]

    # -- reads ----------------------------------------------------------------------
    def window_counts(self, cfg: FeatureConfig, w: int, at_ms: int) -> list[float]:
        """[view, click, add_to_cart, purchase, spend] in window w ending at event time at_ms."""
        if at_ms == self.max_ts:
            total = self.tiles[w].get(-1)
            return total[:5] if total is not None else [0.0, 0.0, 0.0, 0.0, 0.0]
        tile_ms = cfg.tile_ms(w)
        cur = at_ms // tile_ms
        lo = cur - cfg.window_buckets
        out = [0.0, 0.0, 0.0, 0.0, 0.0]
        for k, row in self.tiles[w].items():
            if k >= 0 and lo < k <= cur:
                for i in range(5):
                    out[i] += row[i]
        return out

    @property
    def session_id(self) -> str:
        return self.sess[4] or f"{self.user_id}#{self.sess[0]}"

    def sequence(self) -> tuple[SeqItem, ...]:
        return tuple(self.seq)

    def numeric_features(self, cfg: FeatureConfig, ev: EventLike) -> dict[str, float]:
        """The model's numeric feature vector right after `ev` was applied (point in time)."""
        at = self.max_ts
        f: dict[str, float] = {
            "events_total": float(self.total),
            "count_view": float(self.counts[0]), "count_click": float(self.counts[1]),
            "count_add_to_cart": float(self.counts[2]),
            "count_purchase": float(self.counts[3]),
        }
        hour: Sequence[float] | None = None
        for w, names, hours, is_hour in cfg.feature_names:
            total = self.tiles[w].get(-1)
            c = total if total is not None else _ZERO5
            f[names[0]] = c[0]
            f[names[1]] = c[1]
            f[names[2]] = c[2]
            f[names[3]] = c[3]
            f[names[4]] = c[4]
            f[names[5]] = c[3] / hours
            if is_hour:
                hour = c
        _, start, last, length, _ = self.sess
        f["session_length"] = float(length)
        f["session_duration_s"] = (last - start) / 1000 if start >= 0 else 0.0
        f["distinct_items"] = float(_kmv_estimate(self.items))
        f["distinct_categories"] = float(_kmv_estimate(self.cats))
        f["distinct_devices_24h"] = (
            float(_count_since(self.devices, at - _DAY_MS)) if self.devices else 0.0)
        f["distinct_ips_24h"] = float(_count_since(self.ips, at - _DAY_MS)) if self.ips else 0.0
        f["gap_s"] = self.prev_gap_ms / 1000 if self.prev_gap_ms >= 0 else -1.0
        if hour is not None:
            views = max(hour[0], 1.0)
            f["cart_to_view_1h"] = hour[2] / views
            f["purchase_to_view_1h"] = hour[3] / views
        f["price"] = float(ev.price or 0.0)
        f["new_device"] = 1.0 if self.new_device else 0.0
        f["new_ip"] = 1.0 if self.new_ip else 0.0
        return f

    def snapshot(self, cfg: FeatureConfig, now_ms: int) -> dict[str, Any]:
        """The JSON view served at GET /features/{user_id}; windows as of the latest event."""
        at = self.max_ts
        windows: dict[str, Any] = {}
        for w, label in enumerate(cfg.labels):
            c = self.window_counts(cfg, w, at)
            windows[label] = {
                **{name: int(c[i]) for i, name in enumerate(EVENT_TYPES)},
                "spend": round(c[4], 6),
                "purchase_velocity_per_h": c[3] / (cfg.windows_s[w] / 3600),
            }
        num, start, last, length, _ = self.sess
        return {
            "user_id": self.user_id,
            "events_total": self.total,
            "counts": {name: self.counts[i] for i, name in enumerate(EVENT_TYPES)},
            "windows": windows,
            "as_of_event_ts": at,
            "first_ts": self.first_ts,
            "last_ts": at,
            "seconds_since_last_event": max(0.0, (now_ms - at) / 1000) if at >= 0 else None,
            "spend_total": round(self.spend_total, 6),
            "session": {"id": self.session_id if num else None, "length": length,
                        "start_ts": start, "duration_s": (last - start) / 1000 if num else 0},
            "distinct_items": _kmv_estimate(self.items),
            "distinct_categories": _kmv_estimate(self.cats),
            "distinct_devices_24h": _count_since(self.devices, at - _DAY_MS),
            "distinct_ips_24h": _count_since(self.ips, at - _DAY_MS),
            "late_events": self.late,
            "duplicates": self.dups,
            "sequence": [{"item_id": e.item_id, "type": e.event_type, "ts": e.ts_ms}
                         for e in self.seq],
        }



def _pack(values: array[int]) -> str:
    """uint64s as base64 of their little-endian bytes: a third of their JSON decimal size."""
    if _BIG_ENDIAN:
        values = array("Q", values)
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def _unpack(text: str) -> array[int]:
    values = array("Q", base64.b64decode(text))
    if _BIG_ENDIAN:
        values.byteswap()
    return values


_BIG_ENDIAN = sys.byteorder == "big"


def _kmv_add(sketch: array[int], h: int) -> None:
    if len(sketch) >= _KMV_K and h >= sketch[-1]:
        return
    pos = bisect.bisect_left(sketch, h)
    if pos < len(sketch) and sketch[pos] == h:
        return
    sketch.insert(pos, h)
    if len(sketch) > _KMV_K:
        sketch.pop()


def _kmv_estimate(sketch: array[int]) -> int:
    if len(sketch) < _KMV_K:
        return len(sketch)
    return int((_KMV_K - 1) * (2**64) / (sketch[-1] + 1))


def _touch(seen: dict[str, int], value: str | None, ts: int, now_ts: int) -> bool:
    """Remember value's last time; True if it is new for this user within the last 24 h."""
    if not value:
        return False
    key = format(_h64(value), "016x")
    prev = seen.get(key)
    is_new = (prev is None or prev < ts - _DAY_MS) and bool(seen)
    if prev is None or ts > prev:
        seen[key] = ts
    if len(seen) > _MAX_KEYS_24H:
        horizon = now_ts - _DAY_MS
        for k in [k for k, v in seen.items() if v < horizon]:
            del seen[k]
        while len(seen) > _MAX_KEYS_24H:
            del seen[min(seen, key=seen.__getitem__)]
    return is_new


def _count_since(seen: dict[str, int], horizon: int) -> int:
    return sum(1 for v in seen.values() if v >= horizon)
