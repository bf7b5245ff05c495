"""The service processes: `lamstream broker`, `worker`, `feedback` and `trainer`."""

from __future__ import annotations

import gc
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from model.errors import FeatureMismatch
from model.predictor import Predictor
from model.recommenders.baseline import BaselinePredictor
from model.registry import ModelRegistry
from stream.cli._common import (
    command,
    errors,
    fail,
    get_settings,
    setup_logging,
    sigterm_to_exit,
)
from stream.devtools.procs import broker_for
from stream.settings import Settings
from stream.state.features import FeatureConfig
from stream.worker.supervisor import plan_children, resolve_processes, run_supervised

app = typer.Typer()

log = logging.getLogger(__name__)


@command(app)
def broker(port: Annotated[int, typer.Option(help="Port to listen on.")] = 9092,
           create_topics: Annotated[bool, typer.Option(help="Create lamstream's topics.")] = True,
           ) -> None:
    """Run the embedded Kafka-compatible broker (tansu, in memory).

    It runs until Ctrl-C / SIGTERM and prints LAMSTREAM_BOOTSTRAP_SERVERS=host:port on stdout
    for the other processes.
    """
    from stream.kafka.admin import ensure_topics

    settings = get_settings(bootstrap_servers=None).model_copy(
        update={"bootstrap_servers": None, "embedded_port": port})
    sigterm_to_exit()
    with errors(), broker_for(settings, port=port) as s:
        if create_topics:
            created = ensure_topics(s)
            typer.echo(f"topics ready ({len(created)} created)", err=True)
        typer.echo(f"LAMSTREAM_BOOTSTRAP_SERVERS={s.bootstrap}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            typer.echo("stopping broker", err=True)


@command(app)
def worker(
    web_port: Annotated[int | None, typer.Option(help="HTTP port (LAMSTREAM_WEB_PORT).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="State dir (LAMSTREAM_DATA_DIR).")] = None,
    predictor: Annotated[str | None, typer.Option(
        help="Serve your own model: package.module:factory returning a "
        "model.predictor.Predictor (LAMSTREAM_PREDICTOR; docs/models.md).")] = None,
    processes: Annotated[str | None, typer.Option(
        help="Group members to run on this host, each its own process, state dir "
        "(DATA_DIR/p0, p1, ...) and web port (WEB_PORT + i), under one supervisor; auto: "
        "one per CPU core the OS reports (LAMSTREAM_WORKER_PROCESSES, default 1: this "
        "process).")] = None,
) -> None:
    """Run a worker: consume events, publish decisions, serve HTTP.

    It keeps every user's rolling features in its tables, publishes a recommendation (and,
    above LAMSTREAM_RISK_THRESHOLD, a risk alert) per event and serves the dashboard,
    /features and /metrics. With LAMSTREAM_BOOTSTRAP_SERVERS unset, an embedded broker is
    started first. With --predictor (LAMSTREAM_PREDICTOR) it serves your own model through
    the same exploration policy, decision log and dashboard.

    With --processes N (or auto) a supervisor runs N such workers of one consumer group
    on this host, one per core, restarts one that dies and stops them all on SIGTERM
    (docs/operations.md).
    """
    settings = get_settings(web_port=web_port, data_dir=data_dir, predictor=predictor,
                            worker_processes=processes)
    setup_logging(settings)
    with errors():
        n = resolve_processes(settings.worker_processes)
        if settings.predictor:  # a factory that cannot be imported fails before any broker
            from stream.worker.custom import import_factory

            import_factory(settings.predictor)
        if n > 1:
            plan_children(settings, n)  # ports past 65535 fail before any broker
        with broker_for(settings) as s:
            if n == 1:
                run_worker(s)
                return
            from stream.kafka.admin import ensure_topics  # kafka: not for --help

            ensure_topics(s)  # once, rather than N children racing to create them
            code = run_supervised(s, n)
    if code:
        raise fail("a worker process kept dying: giving up (its log is above)")


@command(app)
def feedback() -> None:
    """Run the reward and risk-label joins that feed the trainer.

    The delayed-reward join turns decisions + later events into one `feedback` record per
    recommendation (attribution window LAMSTREAM_FEEDBACK_WINDOW_S, default 1800 s of event
    time; rewards LAMSTREAM_FEEDBACK_REWARDS, default click=1,add_to_cart=2,purchase=5).
    The risk-label join turns decisions + risk-alerts + risk-labels into one `risk-feedback`
    record per labelled scored event (LAMSTREAM_LABEL_WINDOW_S, default 7 days).

    Needs LAMSTREAM_PSEUDONYM_KEY; with LAMSTREAM_BOOTSTRAP_SERVERS unset it starts an
    embedded broker, which only makes sense for a try-out.
    """
    from stream.feedback.app import run_feedback

    settings = get_settings()
    setup_logging(settings)
    with errors(), broker_for(settings) as s:
        run_feedback(s)


@command(app)
def trainer(
    feedback_file: Annotated[str | None, typer.Option(
        "--feedback", help="Train from a feedback JSONL file instead of the topic (publishes "
        "to the registry if the gate passes, announces nothing).")] = None,
    risk_feedback_file: Annotated[str | None, typer.Option(
        "--risk-feedback", help="Train the risk model from a risk-feedback JSONL file instead "
        "of the topic (with or without --feedback; publishes if its gate passes, announces "
        "nothing).")] = None,
    once: Annotated[bool, typer.Option(help="Stop when the feedback topic has been idle for "
                                       "--idle-exit seconds (one last gate check first).")]
    = False,
    idle_exit: Annotated[float, typer.Option(help="With --once: idle seconds before "
                                             "stopping.")] = 5.0,
    json_out: Annotated[bool, typer.Option("--json", help="At the end, print the gate log "
                                           "and what was published as one JSON object.")]
    = False,
) -> None:
    """Run the trainer: learn from feedback, publish gated versions.

    It consumes `feedback` and `risk-feedback`, fine-tunes the reranker and the risk model on
    replay buffers, scores every new batch before training on it (prequential), and publishes
    + announces a new version only when it beats the serving one on the held-out window
    (reranker: LAMSTREAM_TRAINER_MARGIN, _CONFIDENCE, _WINDOW, _GATE_EVERY; risk: ROC-AUC,
    LAMSTREAM_TRAINER_RISK_MARGIN, _RISK_MIN_POSITIVES, _RISK_WINDOW, _RISK_GATE_EVERY).
    State (weights, optimizer, replay, window) survives restarts under DATA_DIR/trainer;
    `lamstream model rollback reranker|risk` steps back a version.
    """
    from stream.trainer.loop import run_trainer, train_from_file  # torch: not for --help

    settings = get_settings()
    setup_logging(settings)
    with errors():
        if feedback_file is not None or risk_feedback_file is not None:
            ct = train_from_file(settings, feedback_file, risk_source=risk_feedback_file)
        else:
            with broker_for(settings) as s:
                ct = run_trainer(s, once=once, idle_exit_s=idle_exit)
    if json_out:
        typer.echo(orjson.dumps({"published": ct.published, "gates": ct.gates,
                                 **ct.trainer.stats(),
                                 "risk": {"published": ct.risk_published,
                                          "gates": ct.risk_gates, **ct.risk.stats()}}).decode())


def build_predictor(settings: Settings) -> Any:
    """The predictor the worker starts with: the user's own (LAMSTREAM_PREDICTOR), else the
    registry's latest, else the online baseline (with the latest published risk model, if
    any: model.risk.overlay)."""
    if settings.predictor:
        return build_custom(settings)
    predictor: Any = BaselinePredictor()
    try:  # torch: imported here so that --help and a torch-less install stay light
        from model.risk.overlay import overlay_risk
        from model.serving import load_predictor
    except ImportError:  # no torch: the online baseline alone
        return predictor
    produced = FeatureConfig.from_settings(settings).produced_names
    with_risk = True
    for _ in range(2):
        try:
            if settings.model_name != "baseline":
                predictor = load_predictor(settings.data_dir, device=settings.device,
                                           prefer=settings.model_name, features=produced,
                                           with_risk=with_risk,
                                           explain_risk_above=settings.risk_threshold)
            if isinstance(predictor, BaselinePredictor) and with_risk:
                return overlay_risk(predictor, ModelRegistry(settings.data_dir),
                                    device=settings.device, features=produced,
                                    explain_above=settings.risk_threshold)
            return predictor
        except FeatureMismatch as exc:  # the latest risk model reads columns the stream lacks
            log.error("not serving the registry's latest risk model: %s; the rule risk "
                      "serves instead", exc)
            predictor, with_risk = BaselinePredictor(), False
    return predictor


def build_custom(settings: Settings) -> Predictor:
    """The user's predictor; one that accepts announcements also gets the registry's latest
    risk model, as the baseline does (its own risk scores otherwise)."""
    from stream.worker.custom import accepts_announcements, import_factory, make_custom

    spec = settings.predictor or ""
    factory = import_factory(spec)
    predictor = make_custom(factory, spec)
    log.info("serving %s: %s %s", spec, predictor.name, predictor.version)
    if not accepts_announcements(factory, predictor):
        return predictor
    from model.risk.overlay import overlay_risk  # torch: the user's model brought it already

    produced = FeatureConfig.from_settings(settings).produced_names
    return overlay_risk(predictor, ModelRegistry(settings.data_dir), device=settings.device,
                        features=produced, explain_above=settings.risk_threshold)


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
    """The worker process: topics, the Faust app with its predictor, until SIGTERM."""
    from stream.kafka.admin import ensure_topics  # kafka and faust: not for --help
    from stream.worker.app import create_app, run_until_stopped

    predictor = build_predictor(settings)  # the user's own may fail: before touching Kafka
    ensure_topics(settings)
    w = create_app(settings, predictor=predictor)
    tune_gc()
    tune_switching(settings)
    typer.echo(f"worker {settings.app_id}: http://{settings.web_host}:{settings.web_port} "
               f"(model {w.ingest.holder.current.name} {w.ingest.holder.current.version})",
               err=True)
    run_until_stopped(w.app, settings)
