"""Dataset readers: every layout to lamstream event dicts, detection, mapping and errors."""

from __future__ import annotations

import gzip
import io
import logging
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from model.datasets import detect_layout, iter_events, iter_fraud_labels, iter_payloads
from stream.schemas import Event

TAOBAO = "1,2268318,2520377,pv,1511544070\n1,2333346,2520771,fav,1511561733\n" \
         "2,3,4,cart,1511572885\n2,5,4,buy,1511572886\n"
YOOCHOOSE = "SessionId\tItemId\tTime\n1\t214536502\t1396860669.277\n1\t214536506\t1396860886.998\n"
OTTO = (b'{"session":7,"events":[{"aid":11,"ts":1659304800025,"type":"clicks"},'
        b'{"aid":12,"ts":1659304904511,"type":"carts"},'
        b'{"aid":12,"ts":1659304999000,"type":"orders"}]}\n'
        b'{"session":8,"events":[{"aid":13,"ts":1659305000000,"type":"clicks"}]}\n')
FRAUD = ("user_id,signup_time,purchase_time,purchase_value,device_id,source,browser,sex,age,"
         "class\n22058,2/24/15 22:55,4/18/15 2:47,34,QVPSPJUOCKZAR,SEO,Chrome,M,39,0\n"
         "265552,7/3/15 6:42,10/27/15 21:59,25,ALTTRWYYVGXPY,Direct,IE,M,33,1\n")


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def assert_valid(events: list[dict[str, Any]]) -> None:
    for e in events:
        Event.model_validate(e)


def test_taobao_maps_behaviours_and_seconds(tmp_path: Path) -> None:
    events = list(iter_events(write(tmp_path, "ub.csv", TAOBAO)))
    assert [e["type"] for e in events] == ["view", "click", "add_to_cart", "purchase"]
    assert events[0] == {"event_id": events[0]["event_id"], "user_id": "1", "type": "view",
                         "item_id": "2268318", "ts": 1511544070000, "category": "2520377"}
    assert events[0]["event_id"].startswith("taobao-1-")
    assert len({e["event_id"] for e in events}) == 4
    assert_valid(events)


def test_taobao_header_line_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, "ub.csv", "user_id,item_id,category_id,behavior,timestamp\n" + TAOBAO)
    assert detect_layout(path) == "taobao"
    assert len(list(iter_events(path))) == 4


def test_taobao_row_with_wrong_column_count_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "ub.csv", TAOBAO + "3,4,pv,1511572886\n")
    with pytest.raises(ValueError, match=r"ub\.csv:5: taobao rows have 5 columns"):
        list(iter_events(path, "taobao"))


def test_replaying_a_file_gives_the_same_ids(tmp_path: Path) -> None:
    path = write(tmp_path, "ub.csv", TAOBAO)
    first = [e["event_id"] for e in iter_events(path)]
    assert first == [e["event_id"] for e in iter_events(path)]
    # the same line number with other content is another event
    other = write(tmp_path, "other.csv", "9,9,9,pv,1511544070\n")
    assert next(iter_events(other))["event_id"] != first[0]


def test_yoochoose_session_is_user_and_seconds_become_ms(tmp_path: Path) -> None:
    path = write(tmp_path, "clicks.txt", YOOCHOOSE)
    assert detect_layout(path) == "yoochoose"
    events = list(iter_events(path))
    assert [(e["user_id"], e["session_id"], e["type"], e["item_id"], e["ts"]) for e in events] \
        == [("1", "1", "click", "214536502", 1396860669277),
            ("1", "1", "click", "214536506", 1396860886998)]
    assert events[0]["event_id"].startswith("yoochoose-2-")
    assert_valid(events)


def test_otto_sessions_expand_to_events(tmp_path: Path) -> None:
    path = write(tmp_path, "otto.jsonl", OTTO)
    assert detect_layout(path) == "otto"
    events = list(iter_events(path))
    assert [(e["user_id"], e["type"], e["item_id"], e["ts"]) for e in events] == [
        ("7", "click", "11", 1659304800025), ("7", "add_to_cart", "12", 1659304904511),
        ("7", "purchase", "12", 1659304999000), ("8", "click", "13", 1659305000000)]
    assert len({e["event_id"] for e in events}) == 4
    assert_valid(events)


def test_otto_line_that_is_not_a_session_raises(tmp_path: Path) -> None:
    path = write(tmp_path, "otto.jsonl", OTTO + b'{"session": 9}\n')
    with pytest.raises(ValueError, match=r"otto\.jsonl:3: not an OTTO session"):
        list(iter_events(path, "otto"))


def test_fraud_one_purchase_per_user_with_price_device_and_attrs(tmp_path: Path) -> None:
    path = write(tmp_path, "Fraud_Data.csv", FRAUD)
    assert detect_layout(path) == "fraud"
    events = list(iter_events(path))
    first = events[0]
    assert first["user_id"] == "22058" and first["type"] == "purchase"
    assert first["item_id"] == "purchase" and first["price"] == 34.0
    assert first["device_id"] == "QVPSPJUOCKZAR"
    assert first["ts"] == 1429325220000  # 2015-04-18 02:47 UTC
    assert first["attrs"] == {"source": "SEO", "browser": "Chrome", "sex": "M", "age": "39",
                              "signup_time": "2015-02-24T22:55:00+00:00"}
    assert "class" not in first and all("label" not in e for e in events)
    assert_valid(events)
    assert [(x["user_id"], x["label"]) for x in iter_fraud_labels(path)] == [
        ("22058", "legit"), ("265552", "fraud")]


def test_fraud_ip_address_float_becomes_dotted_quad(tmp_path: Path) -> None:
    path = write(tmp_path, "fd.csv", "user_id,signup_time,purchase_time,purchase_value,"
                 "device_id,ip_address,class\n1,2015-02-24 22:55:49,2015-04-18 02:47:11,34,"
                 "D,732758368.79972,0\n")
    event = next(iter_events(path, "fraud"))
    assert event["ip"] == "43.173.1.96"
    assert event["ts"] == 1429325231000


def test_jsonl_passes_objects_through_unchanged(tmp_path: Path) -> None:
    bad_but_object = {"event_id": "e2", "user_id": "u", "type": "teleport", "price": -1}
    lines = [orjson.dumps({"event_id": "e1", "user_id": "u", "type": "view", "item_id": "i",
                           "ts": "2024-01-01T00:00:00Z", "extra": 1}),
             orjson.dumps(bad_but_object), b"not json at all", b"[1, 2]", b""]
    path = write(tmp_path, "events.jsonl", b"\n".join(lines) + b"\n")
    assert detect_layout(path) == "jsonl"
    events = list(iter_events(path))
    assert events[0]["ts"] == "2024-01-01T00:00:00Z" and events[0]["extra"] == 1
    assert events[1] == bad_but_object  # still malformed: the worker must reject it
    assert len(events) == 2


def test_jsonl_payloads_keep_malformed_lines_byte_for_byte(tmp_path: Path) -> None:
    lines = [b'{"event_id":"e1","user_id":"u1","type":"view","item_id":"i","ts":1}',
             b"not json at all", b'{"user_id": 5}', b'{"user_id":"u2","type":"x"}']
    path = write(tmp_path, "events.jsonl", b"\n".join(lines) + b"\n\n")
    assert list(iter_payloads(path)) == [("u1", lines[0]), (None, lines[1]), (None, lines[2]),
                                         ("u2", lines[3])]


def test_payloads_of_other_layouts_are_json_events(tmp_path: Path) -> None:
    path = write(tmp_path, "ub.csv", TAOBAO)
    payloads = list(iter_payloads(path))
    assert [k for k, _ in payloads] == ["1", "1", "2", "2"]
    assert [orjson.loads(v) for _, v in payloads] == list(iter_events(path))


def test_csv_with_lamstream_header(tmp_path: Path) -> None:
    path = write(tmp_path, "ev.csv", "event_id,user_id,type,item_id,ts,price,quantity,category\n"
                 "a1,u1,view,i1,1700000000000,,,books\n"
                 "a2,u1,purchase,i1,2024-01-01T00:00:00Z,12.5,2,\n"
                 ",u2,buy,i2,1700000000,,,\n")
    assert detect_layout(path) == "csv"
    events = list(iter_events(path))
    assert events[0] == {"event_id": "a1", "user_id": "u1", "type": "view", "item_id": "i1",
                         "ts": 1700000000000, "category": "books"}
    assert events[1] == {"event_id": "a2", "user_id": "u1", "type": "purchase",
                         "item_id": "i1", "ts": 1704067200000, "price": 12.5, "quantity": 2}
    # no id in the row: a deterministic one; seconds become ms; dataset aliases are mapped
    assert events[2]["event_id"].startswith("csv-4-")
    assert events[2]["ts"] == 1700000000000 and events[2]["type"] == "purchase"
    assert_valid(events)


def test_csv_mapping_reads_any_header(tmp_path: Path) -> None:
    # RetailRocket's events.csv layout
    path = write(tmp_path, "rr.csv", "timestamp,visitorid,event,itemid,transactionid\n"
                 "1433221332117,257597,view,355908,\n1433224214164,992329,addtocart,248676,\n")
    mapping = {"ts": "timestamp", "user_id": "visitorid", "type": "event", "item_id": "itemid"}
    events = list(iter_events(path, mapping=mapping))
    assert [(e["user_id"], e["type"], e["item_id"], e["ts"]) for e in events] == [
        ("257597", "view", "355908", 1433221332117),
        ("992329", "add_to_cart", "248676", 1433224214164)]
    assert_valid(events)


def test_csv_values_that_do_not_convert_pass_through_for_validation(tmp_path: Path) -> None:
    path = write(tmp_path, "ev.csv", "user_id,type,item_id,ts,price\nu,view,i,soon,cheap\n")
    event = next(iter_events(path, "csv"))
    assert event["ts"] == "soon" and event["price"] == "cheap"
    with pytest.raises(ValueError):
        Event.model_validate(event)


def test_csv_errors_are_one_clear_line(tmp_path: Path) -> None:
    path = write(tmp_path, "ev.csv", "a,b,c\n1,2,3\n")
    # header problems surface when iter_events is called, before any row is read
    with pytest.raises(ValueError, match=r"csv header lacks user_id, item_id, type, ts; pass "
                                         r"a mapping"):
        iter_events(path, "csv")
    with pytest.raises(ValueError, match="mapping names columns nope that the header lacks"):
        iter_events(path, mapping={"user_id": "nope", "item_id": "a", "type": "b", "ts": "c"})
    with pytest.raises(ValueError, match="unknown lamstream fields colour"):
        iter_events(path, mapping={"colour": "a"})
    with pytest.raises(ValueError, match="yoochoose header needs SessionId, ItemId and Time"):
        iter_events(path, "yoochoose")
    with pytest.raises(ValueError, match="fraud header lacks user_id, purchase_time"):
        iter_events(path, "fraud")
    with pytest.raises(ValueError, match="only applies to the csv layout"):
        iter_events(path, "taobao", mapping={"user_id": "a"})
    ragged = write(tmp_path, "ragged.csv", "user_id,type,item_id,ts\nu,view,i,1\nu,view\n")
    with pytest.raises(ValueError, match=r"ragged\.csv:3: expected 4 columns, got 2"):
        list(iter_events(ragged))


def test_unknown_layout_and_unreadable_files_fail_at_call_time(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown layout 'parquet'"):
        iter_events(write(tmp_path, "x.csv", TAOBAO), "parquet")
    with pytest.raises(ValueError, match="cannot read .*missing.csv"):
        iter_events(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="is a directory"):
        iter_events(tmp_path)
    with pytest.raises(ValueError, match="is empty"):
        iter_events(write(tmp_path, "empty.csv", ""))
    with pytest.raises(ValueError, match="cannot tell the layout of .*creditcard.csv"):
        detect_layout(write(tmp_path, "creditcard.csv", "Time,V1,V2,Amount,Class\n0,1,2,3,0\n"))


def test_gzip_files_are_read_transparently(tmp_path: Path) -> None:
    path = tmp_path / "ub.csv.gz"
    path.write_bytes(gzip.compress(TAOBAO.encode()))
    assert detect_layout(path) == "taobao"
    assert list(iter_events(path)) == list(iter_events(write(tmp_path, "ub.csv", TAOBAO)))


def test_stdin_is_sniffed_without_losing_the_first_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(TAOBAO.encode())))
    events = list(iter_events("-"))
    assert [e["item_id"] for e in events] == ["2268318", "2333346", "3", "5"]


def test_reading_is_lazy_so_big_files_stream(tmp_path: Path) -> None:
    path = write(tmp_path, "ub.csv", TAOBAO * 2000)
    it = iter_events(path)
    assert next(it)["item_id"] == "2268318"  # no need to read 8000 rows for the first one


def test_bundled_sample_is_valid_real_events() -> None:
    sample = Path(__file__).resolve().parents[3] / "stream" / "sample" / "events.jsonl"
    assert sample.stat().st_size < 400_000
    events = list(iter_events(sample))
    assert len(events) > 2000
    assert_valid(events)
    per_user: dict[str, int] = {}
    for e in events:
        per_user[e["user_id"]] = per_user.get(e["user_id"], 0) + 1
    assert sum(1 for n in per_user.values() if n >= 5) >= 100
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)


def test_skipped_jsonl_lines_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                        ) -> None:
    path = write(tmp_path, "e.jsonl", b'{"user_id":"u"}\nnope\n')
    with caplog.at_level(logging.WARNING, logger="model.datasets"):
        assert list(iter_events(path)) == [{"user_id": "u"}]
    assert "e.jsonl:2: not a JSON object" in caplog.text
