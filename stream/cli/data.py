"""Data in and out of a running system: `produce`, `tail`, `topics`, `features`, `schema`."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Annotated

import orjson
import typer

from model.datasets import iter_payloads
from stream.cli._common import command, errors, fail, get_settings, say
from stream.devtools.replay import paced
from stream.schemas import export_json_schemas
from stream.topics import full_topic_name

app = typer.Typer()
topics_app = typer.Typer(no_args_is_help=True, help="List or create lamstream's topics.")
schema_app = typer.Typer(no_args_is_help=True, help="JSON Schema of the wire records.")


@command(app)
def produce(
    file: Annotated[str, typer.Argument(help="Event file (CSV/TSV/JSONL, .gz ok) or '-'.")],
    layout: Annotated[str, typer.Option(help="auto|taobao|yoochoose|otto|fraud|jsonl|csv")]
    = "auto",
    rate: Annotated[float, typer.Option(help="Events per second (0 = as fast as possible).")]
    = 0.0,
    limit: Annotated[int, typer.Option(help="Stop after this many events (0 = all).")] = 0,
    map_: Annotated[list[str] | None, typer.Option(
        "--map", help="CSV column mapping field=column, e.g. --map user_id=uid.")] = None,
) -> None:
    """Send events from a file to the events topic.

    Lines are sent as they are, malformed ones too: the worker validates them and sends
    what it cannot read to the dead-letter topic.
    """
    from stream.client import EventProducer  # kafka: not for --help

    settings = get_settings()
    pairs = [m.split("=", 1) for m in map_ or []]
    if any(len(p) != 2 for p in pairs):
        raise fail(f"--map takes field=column, got {' '.join(map_ or [])!r}")
    sent = 0
    with errors(), EventProducer(settings, validate=False) as producer:
        t0 = time.monotonic()
        mapping = dict(pairs) or None
        for key, value in paced(iter_payloads(file, layout, mapping), rate, limit):
            producer.send_raw(value, key.encode() if key is not None else None)
            sent += 1
        producer.flush()
    say(f"sent {sent} events in {time.monotonic() - t0:.1f}s")


@command(app)
def tail(
    topic: Annotated[str, typer.Argument(help="events|events.dlq|recommendations|risk-alerts|"
                                         "feedback|risk-feedback|model-updates (prefix "
                                         "added) or a name")],
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest record.")] = False,
    max_records: Annotated[int, typer.Option(help="Stop after N records (0 = never).")] = 0,
    timeout: Annotated[float, typer.Option(help="Stop after S idle seconds (0 = never).")] = 0,
) -> None:
    """Print records of a topic as JSON lines."""
    from stream.client import tail as tail_records  # kafka: not for --help

    settings = get_settings()
    name = full_topic_name(settings, topic)
    with errors():
        for key, value in tail_records(settings, name, from_beginning=from_beginning,
                                       max_records=max_records or None,
                                       timeout=timeout or None):
            typer.echo(orjson.dumps({"key": key, "value": value}).decode())


@command(topics_app, "list")
def topics_list() -> None:
    """List topics and partition counts."""
    from stream.kafka.admin import list_topics  # kafka: not for --help

    settings = get_settings()
    with errors():
        for name, n in list_topics(settings).items():
            typer.echo(f"{name}\t{n}")


@command(topics_app, "create")
def topics_create() -> None:
    """Create every lamstream topic (idempotent).

    Partitions and replication from LAMSTREAM_PARTITIONS and LAMSTREAM_REPLICATION_FACTOR;
    topics that exist are left as they are.
    """
    from stream.kafka.admin import ensure_topics  # kafka: not for --help

    settings = get_settings()
    with errors():
        created = ensure_topics(settings)
    typer.echo(f"created {len(created)}: {', '.join(created) or '-'}")


@command(app)
def features(
    user: Annotated[str, typer.Argument(help="User id.")],
    url: Annotated[str | None, typer.Option(help="Worker URL (default from settings).")] = None,
) -> None:
    """Print a user's rolling features from a running worker.

    GET /features/{user} on the worker (any worker answers for any user), with
    LAMSTREAM_API_TOKEN as the bearer token when it is set.
    """
    settings = get_settings()
    host = "127.0.0.1" if settings.web_binds_all else settings.web_host
    base = url or f"http://{host}:{settings.web_port}"
    req = urllib.request.Request(f"{base}/features/{urllib.parse.quote(user, safe='')}")
    if settings.api_token is not None:
        req.add_header("Authorization", f"Bearer {settings.api_token.get_secret_value()}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise fail(f"{exc.code}: {exc.read().decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise fail(f"no worker at {base}: {exc}") from None
    typer.echo(json.dumps(body, indent=2))


@command(schema_app, "export")
def schema_export(out_dir: Annotated[Path, typer.Argument(help="Directory to write.")]) -> None:
    """Write one JSON Schema file per wire record."""
    with errors():
        for path in export_json_schemas(out_dir):
            typer.echo(str(path))


app.add_typer(topics_app, name="topics")
app.add_typer(schema_app, name="schema")
