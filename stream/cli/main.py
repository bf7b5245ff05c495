"""The `lamstream` command line: broker, worker, demo, produce, tail, topics, features, bench."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer

from stream.cli.export import export_app
from stream.errors import LamstreamError, SettingsError
from stream.settings import Settings, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="lamstream: real-time user-behaviour prediction on Kafka.")
topics_app = typer.Typer(no_args_is_help=True, help="List or create lamstream's topics.")
schema_app = typer.Typer(no_args_is_help=True, help="JSON Schema of the wire records.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (ratios against baselines "
                        "measured in the same run).")
app.add_typer(topics_app, name="topics")
app.add_typer(schema_app, name="schema")
app.add_typer(bench_app, name="bench")
app.add_typer(export_app, name="export")

F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        raise _fail(str(exc), 2) from None


def setup_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        class _Json(logging.Formatter):
            def format(self, record: logging.LogRecord) -> str:
                return orjson.dumps({
                    "ts": record.created, "level": record.levelname, "logger": record.name,
                    "msg": record.getMessage()}).decode()
        handler.setFormatter(_Json())
    else:
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %("
                                               "message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)


@contextmanager
def _errors() -> Iterator[None]:
    """One clear line for expected failures, never a traceback with locals."""
    try:
        yield
    except (LamstreamError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from None


@contextmanager
def broker_for(settings: Settings, *, port: int | None = None) -> Iterator[Settings]:
    """Yield settings pointing at a broker: the configured one, or a fresh embedded one."""
    if not settings.embedded:
        yield settings
        return
    from stream.kafka.broker import EmbeddedBroker

    with EmbeddedBroker(port=port or settings.embedded_port) as broker:
        typer.echo(f"embedded broker (tansu) on {broker.bootstrap}", err=True)
        yield settings.model_copy(update={"bootstrap_servers": broker.bootstrap})


def _sigterm_to_exit() -> None:
    """Make SIGTERM unwind like Ctrl-C so context managers (the broker) clean up."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


# ----------------------------------------------------------------------------------------
@app.command()
def broker(port: Annotated[int, typer.Option(help="Port to listen on.")] = 9092,
           create_topics: Annotated[bool, typer.Option(help="Create lamstream's topics.")] = True,
           ) -> None:
    """Run the embedded Kafka-compatible broker (tansu, in memory) until Ctrl-C / SIGTERM."""
    settings = _settings(bootstrap_servers=None).model_copy(
        update={"bootstrap_servers": None, "embedded_port": port})
    _sigterm_to_exit()
    with _errors(), broker_for(settings, port=port) as s:
        if create_topics:
            from stream.kafka.admin import ensure_topics
            created = ensure_topics(s)
            typer.echo(f"topics ready ({len(created)} created)", err=True)
        typer.echo(f"LAMSTREAM_BOOTSTRAP_SERVERS={s.bootstrap}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            typer.echo("stopping broker", err=True)


@app.command()
def worker(
    web_port: Annotated[int | None, typer.Option(help="HTTP port (LAMSTREAM_WEB_PORT).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="State dir (LAMSTREAM_DATA_DIR).")] = None,
) -> None:
    """Run a worker: consume events, keep features, publish decisions, serve HTTP.

    With LAMSTREAM_BOOTSTRAP_SERVERS unset, an embedded broker is started first.
    """
    settings = _settings(web_port=web_port, data_dir=data_dir)
    setup_logging(settings)
    with _errors(), broker_for(settings) as s:
        run_worker(s)


@app.command()
def feedback() -> None:
    """Run the delayed-reward join: decisions + later events -> one `feedback` record per
    recommendation (attribution window LAMSTREAM_FEEDBACK_WINDOW_S, default 1800 s of event
    time; rewards LAMSTREAM_FEEDBACK_REWARDS, default click=1,add_to_cart=2,purchase=5),
    and the risk-label join: decisions + risk-alerts + risk-labels -> one `risk-feedback`
    record per labelled scored event (LAMSTREAM_LABEL_WINDOW_S, default 7 days).
    Needs LAMSTREAM_PSEUDONYM_KEY; with LAMSTREAM_BOOTSTRAP_SERVERS unset it starts an
    embedded broker, which only makes sense for a try-out."""
    from stream.feedback.app import run_feedback

    settings = _settings()
    setup_logging(settings)
    with _errors(), broker_for(settings) as s:
        run_feedback(s)


def build_predictor(settings: Settings) -> Any:
    """The predictor the worker starts with: the registry's latest, else the online baseline
    (with the latest published risk model, if any: model.risk.overlay)."""
    from model.recommenders.baseline import BaselinePredictor
    from model.registry import ModelRegistry

    predictor: Any = BaselinePredictor()
    try:
        from model.risk.overlay import overlay_risk
        from model.serving import load_predictor
    except ImportError:  # no torch: the online baseline alone
        return predictor
    if settings.model_name != "baseline":
        predictor = load_predictor(settings.data_dir, device=settings.device,
                                   prefer=settings.model_name)
    if isinstance(predictor, BaselinePredictor):
        return overlay_risk(predictor, ModelRegistry(settings.data_dir), device=settings.device)
    return predictor


def tune_gc() -> None:
    """Collect garbage far less often than CPython's default (every 700 allocations).

    The worker allocates a few dozen short-lived objects per event and keeps large long-lived
    structures (model state, co-visitation maps); with default thresholds the collector ran
    often enough to cost ~40% of a worker's CPU. Objects that exist after start-up are frozen
    out of collections entirely.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def tune_switching(settings: Settings) -> None:
    """Let a thread keep the GIL longer before another takes it (Python's default: 5 ms).

    The worker's threads (event loop, Faust's consumer thread, the predictor) all run Python,
    so each handover is a forced switch of a busy thread. On the 2-core reference machine,
    `bench pipeline` measured 10.2-11.9k ev/s at 50 ms against 7.9-10.8k at 5 ms (5 runs
    each, interleaved) with no worse p99 at 2,000 ev/s: handovers still happen whenever a
    thread waits on I/O, which is most of the time below saturation.
    """
    sys.setswitchinterval(settings.gil_switch_ms / 1000)


def run_worker(settings: Settings) -> None:

    from stream.kafka.admin import ensure_topics
    from stream.worker.app import create_app, run_until_stopped

    ensure_topics(settings)
    w = create_app(settings, predictor=build_predictor(settings))
    tune_gc()
    tune_switching(settings)
    typer.echo(f"worker {settings.app_id}: http://{settings.web_host}:{settings.web_port} "
               f"(model {w.ingest.holder.current.name} {w.ingest.holder.current.version})",
               err=True)
    run_until_stopped(w.app, settings)


@app.command()
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
    """Send events from a file to the events topic (malformed lines are sent as they are)."""
    from model.datasets import iter_payloads
    from stream.client import EventProducer

    settings = _settings()
    mapping = dict(m.split("=", 1) for m in map_ or [])
    with _errors(), EventProducer(settings, validate=False) as producer:
        sent = 0
        t0 = time.monotonic()
        for key, value in iter_payloads(file, layout, mapping or None):
            producer.send_raw(value, key.encode() if key is not None else None)
            sent += 1
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
            if limit and sent >= limit:
                break
        producer.flush()
    typer.echo(f"sent {sent} events in {time.monotonic() - t0:.1f}s", err=True)


@app.command()
def tail(
    topic: Annotated[str, typer.Argument(help="events|events.dlq|recommendations|risk-alerts|"
                                         "feedback|risk-feedback|model-updates (prefix "
                                         "added) or a name")],
    from_beginning: Annotated[bool, typer.Option(help="Start at the oldest record.")] = False,
    max_records: Annotated[int, typer.Option(help="Stop after N records (0 = never).")] = 0,
    timeout: Annotated[float, typer.Option(help="Stop after S idle seconds (0 = never).")] = 0,
) -> None:
    """Print records of a topic as JSON lines."""
    from stream.client import tail as tail_records
    from stream.topics import topics_for

    settings = _settings()
    names = {spec.name.removeprefix(settings.topic_prefix): spec.name
             for spec in topics_for(settings).all()}
    name = names.get(topic, topic)
    with _errors():
        for key, value in tail_records(settings, name, from_beginning=from_beginning,
                                       max_records=max_records or None,
                                       timeout=timeout or None):
            typer.echo(orjson.dumps({"key": key, "value": value}).decode())


@topics_app.command("list")
def topics_list() -> None:
    """List topics and partition counts."""
    from stream.kafka.admin import list_topics

    with _errors():
        for name, n in list_topics(_settings()).items():
            typer.echo(f"{name}\t{n}")


@topics_app.command("create")
def topics_create() -> None:
    """Create every lamstream topic (idempotent; partitions/replication from settings)."""
    from stream.kafka.admin import ensure_topics

    settings = _settings()
    with _errors():
        created = ensure_topics(settings)
    typer.echo(f"created {len(created)}: {', '.join(created) or '-'}")


@app.command()
def features(
    user: Annotated[str, typer.Argument(help="User id.")],
    url: Annotated[str | None, typer.Option(help="Worker URL (default from settings).")] = None,
) -> None:
    """Print a user's rolling features from a running worker (GET /features/{user})."""
    settings = _settings()
    host = "127.0.0.1" if settings.web_binds_all else settings.web_host
    base = url or f"http://{host}:{settings.web_port}"
    req = urllib.request.Request(f"{base}/features/{urllib.parse.quote(user, safe='')}")
    if settings.api_token is not None:
        req.add_header("Authorization", f"Bearer {settings.api_token.get_secret_value()}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise _fail(f"{exc.code}: {exc.read().decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise _fail(f"no worker at {base}: {exc}") from None
    typer.echo(json.dumps(body, indent=2))


@schema_app.command("export")
def schema_export(out_dir: Annotated[Path, typer.Argument(help="Directory to write.")]) -> None:
    """Write one JSON Schema file per wire record."""
    from stream.schemas import export_json_schemas

    with _errors():
        for path in export_json_schemas(out_dir):
            typer.echo(str(path))


@app.command()
def demo(
    data: Annotated[str | None, typer.Option(help="Event file (default: Taobao stream in "
                                             "../shared/data, else the bundled sample).")] = None,
    events: Annotated[int, typer.Option(help="How many events to replay.")] = 20000,
    rate: Annotated[float, typer.Option(help="Events per second.")] = 2000.0,
    hold: Annotated[float, typer.Option(help="Keep the worker and its dashboard up this many "
                                        "seconds after the summary (-1: until Ctrl-C).")] = 0.0,
) -> None:
    """Start broker + worker, replay real events, show decisions live, print a summary."""
    from stream.devtools.demo import run_demo

    settings = _settings()
    with _errors():
        run_demo(settings, data=data, events=events, rate=rate, hold=hold)


@bench_app.command("pipeline")
def bench_pipeline(
    events: Annotated[int, typer.Option(help="Events per measured run.")] = 60000,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    data: Annotated[str | None, typer.Option(help="Event file (default: Taobao stream).")]
    = None,
) -> None:
    """Raw aiokafka passthrough vs naive Faust agent vs the lamstream worker, then latency at
    2,000 ev/s through the worker and through a bare passthrough (the floor), one run."""
    from stream.devtools.bench_pipeline import run_pipeline_bench

    settings = _settings()
    with _errors():
        result = run_pipeline_bench(settings, n_events=events, data=data,
                                    log=lambda m: typer.echo(m, err=True))
    if json_out:
        typer.echo(json.dumps(result))
    else:
        for k, v in result.items():
            typer.echo(f"{k:>16}: {v}")


@bench_app.command("scale")
def bench_scale(
    workers: Annotated[str, typer.Option(help="Worker counts to run, comma-separated.")]
    = "1,2,3",
    events: Annotated[int, typer.Option(help="Events per configuration.")] = 40000,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    data: Annotated[str | None, typer.Option(help="Event file (default: Taobao stream).")]
    = None,
) -> None:
    """1, 2, 3 ... workers in one group drain the same events: throughput and exact counts."""
    from stream.devtools.bench_scale import parse_workers, run_scale_bench

    settings = _settings()
    with _errors():
        result = run_scale_bench(settings, workers=parse_workers(workers), n_events=events,
                                 data=data, log=lambda m: typer.echo(m, err=True))
    if json_out:
        typer.echo(json.dumps(result))
    else:
        for run in result["runs"]:
            typer.echo(f"{run['workers']} worker(s): {run['eps']:>10,.0f} ev/s   counts match: "
                       f"{run['counts_match']}   events per worker: "
                       f"{run['events_per_worker']}")
        typer.echo(result["explanation"])
    if not all(r["counts_match"] for r in result["runs"]):
        raise _fail("per-user counts differ between configurations or from the offline counts")


def _register_learning_commands() -> None:
    from stream.cli.learn import simulate, trainer

    app.command()(trainer)
    app.command()(simulate)


_register_learning_commands()


def _register_model_commands() -> None:
    try:
        from stream.cli import model as cli_model
    except ImportError:  # the model side is optional at this layer
        return
    evaluate_app = getattr(cli_model, "evaluate_app", None)
    if evaluate_app is not None:  # issue #5: off-policy evaluation from logged feedback
        from stream.cli.policy import evaluate_policy
        evaluate_app.command("policy")(evaluate_policy)
    for name in ("train_app", "evaluate_app"):
        sub = getattr(cli_model, name, None)
        if sub is not None:
            app.add_typer(sub, name=name.removesuffix("_app"))
    bench_inference = getattr(cli_model, "bench_inference", None)
    if bench_inference is not None:
        bench_app.command("inference")(bench_inference)
    for extra in ("model_app",):
        sub = getattr(cli_model, extra, None)
        if sub is not None:
            app.add_typer(sub, name=extra.removesuffix("_app"))


_register_model_commands()


def main() -> None:
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
