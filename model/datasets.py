"""Read public behaviour datasets (and lamstream JSONL/CSV) as lamstream event dicts, streaming.

Every reader yields plain dicts shaped like the `events` topic record::

    {"event_id", "user_id", "type", "item_id", "ts" (epoch ms),
     optional "category", "session_id", "price", "quantity", "device_id", "ip", "attrs"}

Layouts (see ../shared/data/README.md for the files):

- ``taobao``: Tianchi UserBehavior, no header ``user_id,item_id,category_id,behavior,unix_s``.
  ``pv`` -> view, ``cart`` -> add_to_cart, ``buy`` -> purchase, and ``fav`` -> click:
  lamstream has no "favourite" type, and a favourite is an engagement between a view and a
  cart add, which is what click stands for in the funnel.
- ``yoochoose``: RecSys 2015 clicks as prepared by session-rec, TSV ``SessionId ItemId Time``
  (unix seconds, float). Sessions are anonymous, so the session id doubles as the user id.
- ``otto``: OTTO JSONL sessions ``{"session", "events": [{"aid", "ts" (ms), "type"}]}``;
  clicks/carts/orders -> click/add_to_cart/purchase; session id doubles as user id.
- ``fraud``: Kaggle Fraud_Data.csv, one purchase per user: item ``"purchase"``, price =
  purchase_value, device_id, ip (when the column exists), ts = purchase_time; signup_time,
  source, browser, sex and age go to ``attrs``. The fraud label is not part of the event:
  read it with iter_fraud_labels().
- ``pairs``: SASRec-style ``user_id item_id`` lines (whitespace-separated integers, no header),
  each user's lines together and in time order, no timestamps and no event types (the
  Amazon review sets: every line is a purchase the user rated). A synthetic clock stands in
  for time: the k-th of a user's n events is at ``PAIRS_T0_MS + PAIRS_SPAN_MS * k / n``, so
  every user spans the same year and a temporal split holds out the end of every history
  (the leave-last-out protocol of the SASRec papers, as a time split).
- ``jsonl``: lamstream events, one JSON object per line, passed through unchanged (not
  validated). iter_events() skips lines that are not JSON objects (logged); iter_payloads()
  yields every line as its original bytes, so malformed input stays malformed.
- ``csv``: a header naming lamstream fields, or any header plus ``mapping`` {field: column}.
  Numeric ts below 1e11 are read as seconds, larger ones as milliseconds; ISO-8601 without
  a timezone is read as UTC. Type aliases of common datasets (pv, fav, cart, buy, clicks,
  carts, orders, addtocart, transaction) are mapped; other values pass through.

Values that cannot be converted pass through as found, so validation downstream reports them
(the worker sends such events to the DLQ). Structural problems (wrong column count, missing
columns) raise DataError (a ValueError) naming the file and line. Sources without event ids get
deterministic ones, ``f"{layout}-{line}-{crc32(line):08x}"``: replaying a file twice yields
the same ids, which is how duplicate handling is exercised.
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
import sys
import zlib
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import orjson

from model.errors import ConfigError, DataError

__all__ = [
    "EVENT_FIELDS", "LAYOUTS", "OTTO_TYPES", "PathLike", "REQUIRED_FIELDS", "TAOBAO_TYPES",
    "TYPE_ALIASES", "detect_layout", "iter_events", "iter_fraud_labels", "iter_payloads",
]

log = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("taobao", "yoochoose", "otto", "fraud", "pairs", "jsonl", "csv")
EVENT_FIELDS: tuple[str, ...] = ("event_id", "user_id", "type", "item_id", "ts", "session_id",
                                 "category", "price", "quantity", "device_id", "ip")
REQUIRED_FIELDS: tuple[str, ...] = ("user_id", "item_id", "type", "ts")

TAOBAO_TYPES: dict[str, str] = {"pv": "view", "fav": "click", "cart": "add_to_cart",
                                "buy": "purchase"}
OTTO_TYPES: dict[str, str] = {"clicks": "click", "carts": "add_to_cart", "orders": "purchase"}
TYPE_ALIASES: dict[str, str] = {**TAOBAO_TYPES, **OTTO_TYPES, "addtocart": "add_to_cart",
                                "transaction": "purchase"}
_TAOBAO_HEADER = ("user_id", "item_id", "category_id", "behavior", "timestamp")
_PAIRS = re.compile(rb"^\d+\s+\d+$")
PAIRS_T0_MS = 1_500_000_000_000
PAIRS_SPAN_MS = 365 * 86_400_000
_MDY_HM = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{2}|\d{4}) (\d{1,2}):(\d{2})")

PathLike = Path | str


class _Source:
    """A file (plain or .gz) or stdin ("-") as binary lines, with its first line peeked."""

    def __init__(self, path: PathLike) -> None:
        self.path = path
        self.name = "<stdin>" if path == "-" else str(path)
        self.suffixes = [] if path == "-" else [s.lower() for s in Path(path).suffixes]
        self._stdin_head: list[bytes] | None = None
        f = self._open()
        self.first = b""
        lines = []
        try:
            for line in f:
                lines.append(line)
                if line.strip():
                    self.first = line.strip()
                    break
        except (OSError, EOFError) as exc:
            raise DataError(f"cannot read {self.name}: {exc}") from None
        finally:
            if path != "-":  # stdin is not ours to close; its peeked lines are replayed
                f.close()
        if path == "-":
            self._stdin_head = lines

    def _open(self) -> IO[bytes]:
        if self.path == "-":
            return sys.stdin.buffer
        p = Path(self.path)
        try:
            if p.is_dir():
                raise DataError(f"{p} is a directory, not a data file")
            if p.suffix.lower() == ".gz":
                return cast(IO[bytes], gzip.open(p, "rb"))
            return p.open("rb")
        except OSError as exc:
            raise DataError(f"cannot read {p}: {exc.strerror or exc}") from None

    def lines(self) -> Iterator[bytes]:
        """Every line (newline included), from the first one."""
        if self._stdin_head is not None:
            yield from self._stdin_head
            self._stdin_head = []
            yield from sys.stdin.buffer
            return
        with self._open() as f:
            try:
                yield from f
            except (OSError, EOFError) as exc:
                raise DataError(f"cannot read {self.name}: {exc}") from None


def _event_id(layout: str, line_no: int, raw: bytes) -> str:
    return f"{layout}-{line_no}-{zlib.crc32(raw) & 0xFFFFFFFF:08x}"


def _sniff(src: _Source, has_mapping: bool) -> str:
    first = src.first
    if not first:
        raise DataError(f"{src.name} is empty")
    if first.startswith(b"{"):
        try:
            obj = orjson.loads(first)
        except orjson.JSONDecodeError:
            return "jsonl"
        return "otto" if isinstance(obj, dict) and {"session", "events"} <= obj.keys() else "jsonl"
    if any(s in (".jsonl", ".ndjson") for s in src.suffixes):
        return "jsonl"
    if _PAIRS.match(first):
        return "pairs"
    text = first.decode("utf-8", "replace").lstrip("\ufeff")
    low = text.lower()
    if "\t" in text and {"sessionid", "itemid"} <= {c.strip() for c in low.split("\t")}:
        return "yoochoose"
    cols = [c.strip() for c in low.split(",")]
    if {"signup_time", "purchase_time", "purchase_value"} <= set(cols):
        return "fraud"
    if len(cols) == 5 and (tuple(cols) == _TAOBAO_HEADER or (
            cols[0].isdigit() and cols[1].isdigit() and cols[4].isdigit()
            and cols[3] in TAOBAO_TYPES)):
        return "taobao"
    if has_mapping or set(REQUIRED_FIELDS) <= {c.strip() for c in _split_header(text)}:
        return "csv"
    raise DataError(f"cannot tell the layout of {src.name} from its first line "
                     f"{text[:80]!r}; pass a layout ({', '.join(LAYOUTS)})")


def detect_layout(path: PathLike) -> str:
    """The layout of a file, sniffed from its first line and extension (not for stdin)."""
    if path == "-":
        raise ConfigError("detect_layout cannot peek at stdin; use iter_events('-', 'auto')")
    return _sniff(_Source(path), has_mapping=False)


def _split_header(text: str) -> list[str]:
    delim = max((",", "\t", ";"), key=text.count)
    return next(csv.reader([text], delimiter=delim))


def _num_ms(value: str) -> int | str:
    """Epoch ms from seconds / ms numbers or ISO-8601 (naive = UTC); else the value as is."""
    v = value.strip()
    try:
        x = float(v)
    except ValueError:
        try:
            dt = datetime.fromisoformat(v[:-1] + "+00:00" if v.endswith("Z") else v)
        except ValueError:
            return value
        return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)
    if x != x or x in (float("inf"), float("-inf")):
        return value
    return round(x * 1000) if abs(x) < 1e11 else round(x)


def _taobao(src: _Source) -> Iterator[dict[str, Any]]:
    for no, raw in enumerate(src.lines(), 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.decode("utf-8", "replace").split(",")
        if len(parts) != 5:
            raise DataError(f"{src.name}:{no}: taobao rows have 5 columns "
                             f"(user_id,item_id,category_id,behavior,ts), got {len(parts)}")
        user, item, cat, behavior, ts = (p.strip() for p in parts)
        if no == 1 and tuple(p.lower() for p in (user, item, cat, behavior, ts)) == \
                _TAOBAO_HEADER:
            continue
        yield {"event_id": _event_id("taobao", no, line), "user_id": user,
               "type": TAOBAO_TYPES.get(behavior, behavior), "item_id": item,
               "ts": int(ts) * 1000 if ts.isdigit() else ts, "category": cat}


def _yoochoose(src: _Source) -> Iterator[dict[str, Any]]:
    lines = src.lines()
    header = [c.strip().lower() for c in next(lines, b"").decode("utf-8", "replace")
              .lstrip("\ufeff").split("\t")]
    try:
        i_s, i_i, i_t = header.index("sessionid"), header.index("itemid"), header.index("time")
    except ValueError:
        raise DataError(f"{src.name}:1: yoochoose header needs SessionId, ItemId and Time, "
                         f"got {header}") from None

    def events() -> Iterator[dict[str, Any]]:
        for no, raw in enumerate(lines, 2):
            line = raw.strip()
            if not line:
                continue
            parts = line.decode("utf-8", "replace").split("\t")
            if len(parts) != len(header):
                raise DataError(f"{src.name}:{no}: expected {len(header)} tab-separated "
                                 f"columns, got {len(parts)}")
            session = parts[i_s].strip()
            yield {"event_id": _event_id("yoochoose", no, line), "user_id": session,
                   "type": "click", "item_id": parts[i_i].strip(), "ts": _num_ms(parts[i_t]),
                   "session_id": session}

    return events()


def _pairs(src: _Source) -> Iterator[dict[str, Any]]:
    """One user's lines at a time (they are contiguous), stamped by the synthetic clock."""
    user: str | None = None
    rows: list[tuple[int, str, bytes]] = []

    def flush() -> Iterator[dict[str, Any]]:
        n = len(rows)
        for k, (no, item, line) in enumerate(rows):
            yield {"event_id": _event_id("pairs", no, line), "user_id": user,
                   "type": "purchase", "item_id": item,
                   "ts": PAIRS_T0_MS + PAIRS_SPAN_MS * k // n}

    for no, raw in enumerate(src.lines(), 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.decode("utf-8", "replace").split()
        if len(parts) != 2:
            raise ValueError(f"{src.name}:{no}: pairs rows have 2 columns (user_id item_id), "
                             f"got {len(parts)}")
        if parts[0] != user:
            yield from flush()
            user, rows = parts[0], []
        rows.append((no, parts[1], line))
    yield from flush()


def _otto(src: _Source) -> Iterator[dict[str, Any]]:
    for no, raw in enumerate(src.lines(), 1):
        line = raw.strip()
        if not line:
            continue
        try:
            obj = orjson.loads(line)
            session, events = str(obj["session"]), obj["events"]
            rows = [(str(e["aid"]), e["ts"], str(e["type"])) for e in events]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{src.name}:{no}: not an OTTO session "
                             f"{{session, events: [{{aid, ts, type}}]}} ({exc})") from None
        crc = zlib.crc32(line) & 0xFFFFFFFF
        for i, (aid, ts, kind) in enumerate(rows):
            yield {"event_id": f"otto-{no}-{i}-{crc:08x}", "user_id": session,
                   "type": OTTO_TYPES.get(kind, kind), "item_id": aid, "ts": ts,
                   "session_id": session}


def _csv_rows(src: _Source) -> tuple[list[str], Iterator[tuple[int, list[str], bytes]]]:
    """(header, iterator of (line number, cells, cells as bytes for ids)) of a delimited file."""
    text_lines = (raw.decode("utf-8", "replace") for raw in src.lines())
    first = next(text_lines, "").lstrip("\ufeff")
    delim = max((",", "\t", ";"), key=first.count)
    header = [c.strip() for c in next(csv.reader([first], delimiter=delim), [])]
    reader = csv.reader(text_lines, delimiter=delim)

    def rows() -> Iterator[tuple[int, list[str], bytes]]:
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise DataError(f"{src.name}:{reader.line_num + 1}: expected {len(header)} "
                                 f"columns, got {len(cells)}")
            yield reader.line_num + 1, cells, "\x1f".join(cells).encode()

    return header, rows()


def _fraud_time(value: str) -> int | str:
    """m/d/yy H:MM (the sample) or Y-m-d H:M:S (the original file), read as UTC."""
    v = value.strip()
    try:
        if m := _MDY_HM.fullmatch(v):  # by hand: strptime is ~10x slower
            mo, d, y, h, mi = map(int, m.groups())
            y += 0 if y >= 100 else 1900 if y >= 69 else 2000  # strptime's %y rule
            dt = datetime(y, mo, d, h, mi, tzinfo=UTC)
        else:
            dt = datetime.strptime(v, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return value
    return int(dt.timestamp() * 1000)


def _ipv4(value: str) -> str:
    """The original Fraud_Data stores IPv4 addresses as floats."""
    try:
        n = int(float(value))
    except ValueError:
        return value
    if not 0 <= n < 2**32:
        return value
    return ".".join(str((n >> s) & 255) for s in (24, 16, 8, 0))


def _fraud_event(col: dict[str, int], no: int, cells: list[str], raw: bytes
                 ) -> dict[str, Any]:
    def get(name: str) -> str | None:
        i = col.get(name)
        return cells[i].strip() or None if i is not None else None

    value = get("purchase_value")
    event: dict[str, Any] = {
        "event_id": _event_id("fraud", no, raw), "user_id": get("user_id") or "",
        "type": "purchase", "item_id": "purchase",
        "ts": _fraud_time(get("purchase_time") or ""),
        "price": _convert("price", value) if value is not None else None,
        "device_id": get("device_id")}
    if (ip := get("ip_address")) is not None:
        event["ip"] = _ipv4(ip)
    attrs = {k: v for k in ("source", "browser", "sex", "age") if (v := get(k)) is not None}
    if (signup := get("signup_time")) is not None:
        ms = _fraud_time(signup)
        attrs["signup_time"] = (datetime.fromtimestamp(ms / 1000, UTC).isoformat()
                                if isinstance(ms, int) else ms)
    if attrs:
        event["attrs"] = attrs
    return {k: v for k, v in event.items() if v is not None}


def _fraud(src: _Source) -> Iterator[dict[str, Any]]:
    header, rows = _csv_rows(src)
    col = {c.lower(): i for i, c in enumerate(header)}
    missing = [c for c in ("user_id", "purchase_time", "purchase_value") if c not in col]
    if missing:
        raise DataError(f"{src.name}:1: fraud header lacks {', '.join(missing)}")
    return (_fraud_event(col, no, cells, raw) for no, cells, raw in rows)


def _check_mapping(mapping: Mapping[str, str], header: list[str], name: str) -> None:
    unknown = [k for k in mapping if k not in EVENT_FIELDS]
    if unknown:
        raise ConfigError(f"mapping names unknown lamstream fields {', '.join(unknown)} "
                         f"(known: {', '.join(EVENT_FIELDS)})")
    absent = [c for c in mapping.values() if c not in header]
    if absent:
        raise ConfigError(f"{name}: mapping names columns {', '.join(absent)} that the header "
                         f"lacks (header: {', '.join(header)})")


def _convert(field: str, value: str) -> Any:
    if field == "ts":
        return _num_ms(value) if value else value
    if field == "type":
        return TYPE_ALIASES.get(value.lower(), value)
    try:
        return float(value) if field == "price" else int(value) if field == "quantity" \
            else value
    except ValueError:
        return value


def _csv(src: _Source, mapping: Mapping[str, str] | None) -> Iterator[dict[str, Any]]:
    header, rows = _csv_rows(src)
    columns = {f: f for f in EVENT_FIELDS if f in header}
    if mapping:
        _check_mapping(mapping, header, src.name)
        columns.update(mapping)
    missing = [f for f in REQUIRED_FIELDS if f not in columns]
    if missing:
        raise DataError(f"{src.name}: csv header lacks {', '.join(missing)}; pass a mapping "
                         f"{{field: column}} (header: {', '.join(header)})")
    index = sorted(((f, header.index(c)) for f, c in columns.items()),
                   key=lambda fc: EVENT_FIELDS.index(fc[0]))

    def events() -> Iterator[dict[str, Any]]:
        for no, cells, raw in rows:
            event = {f: _convert(f, v) for f, i in index
                     if (v := cells[i].strip()) or f in REQUIRED_FIELDS}
            yield event if "event_id" in event else {"event_id": _event_id("csv", no, raw),
                                                      **event}

    return events()


def _jsonl_lines(src: _Source) -> Iterator[tuple[int, bytes]]:
    for no, raw in enumerate(src.lines(), 1):
        line = raw.rstrip(b"\r\n")
        if line.strip():
            yield no, line


def _jsonl(src: _Source) -> Iterator[dict[str, Any]]:
    skipped = 0
    for no, line in _jsonl_lines(src):
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            yield obj
            continue
        skipped += 1
        if skipped <= 5:
            log.warning("%s:%d: not a JSON object, skipped", src.name, no)
    if skipped > 5:
        log.warning("%s: %d lines were not JSON objects and were skipped", src.name, skipped)


def _read(src: _Source, layout: str, mapping: Mapping[str, str] | None
          ) -> Iterator[dict[str, Any]]:
    if layout == "csv":
        return _csv(src, mapping)
    readers = {"taobao": _taobao, "yoochoose": _yoochoose, "otto": _otto, "fraud": _fraud,
               "pairs": _pairs, "jsonl": _jsonl}
    return readers[layout](src)


def _open(path: PathLike, layout: str, mapping: Mapping[str, str] | None
          ) -> tuple[_Source, str]:
    if layout not in LAYOUTS and layout != "auto":
        raise ConfigError(f"unknown layout {layout!r}; use auto or one of {', '.join(LAYOUTS)}")
    if mapping and layout not in ("auto", "csv"):
        raise ConfigError(f"a column mapping only applies to the csv layout, not {layout}")
    src = _Source(path)
    resolved = _sniff(src, bool(mapping)) if layout == "auto" else layout
    if mapping and resolved != "csv":
        resolved = "csv"
    return src, resolved


def iter_events(path: PathLike, layout: str = "auto",
                mapping: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Stream a dataset file ("-" for stdin) as lamstream event dicts, in file order.

    The file is opened and its layout resolved before this returns, so an unknown layout or
    an unreadable file raises ValueError here, not on the first next().
    """
    src, resolved = _open(path, layout, mapping)
    return _read(src, resolved, mapping)


def iter_payloads(path: PathLike, layout: str = "auto",
                  mapping: Mapping[str, str] | None = None
                  ) -> Iterator[tuple[str | None, bytes]]:
    """(user id or None, value bytes) ready to send: what `lamstream produce` writes.

    For jsonl every non-blank line is sent exactly as it is in the file, malformed or not;
    the key is its user_id when the line is an object with a string user_id.
    """
    src, resolved = _open(path, layout, mapping)
    if resolved != "jsonl":
        return ((e.get("user_id") if isinstance(e.get("user_id"), str) else None,
                 orjson.dumps(e)) for e in _read(src, resolved, mapping))

    def raw_lines() -> Iterator[tuple[str | None, bytes]]:
        for _, line in _jsonl_lines(src):
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                obj = None
            user = obj.get("user_id") if isinstance(obj, dict) else None
            yield (user if isinstance(user, str) else None), line

    return raw_lines()


def iter_fraud_labels(path: PathLike) -> Iterator[dict[str, Any]]:
    """Ground truth of a Fraud_Data file as `risk-labels` records: user_id, label, source, ts."""
    src, layout = _open(path, "fraud", None)
    header, rows = _csv_rows(src)
    col = {c.lower(): i for i, c in enumerate(header)}
    if "class" not in col or "user_id" not in col:
        raise DataError(f"{src.name}:1: fraud header lacks class or user_id")

    def labels() -> Iterator[dict[str, Any]]:
        for _, cells, _raw in rows:
            ts = _fraud_time(cells[col["purchase_time"]]) if "purchase_time" in col else 0
            yield {"user_id": cells[col["user_id"]].strip(),
                   "label": "fraud" if cells[col["class"]].strip() == "1" else "legit",
                   "source": layout, "ts": ts}

    return labels()
