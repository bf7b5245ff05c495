"""The tools around the service: `lamstream demo`, `simulate` and `bench`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from model.recommenders.base import METHODS
from model.registry import ModelRegistry
from model.train.progress import Progress
from stream.cli._common import (
    OFFLINE_EXIT,
    DataDirOpt,
    JsonOpt,
    command,
    errors,
    fail,
    get_settings,
    resolve_data_dir,
    setup_logging,
)
from stream.errors import UsageError

app = typer.Typer()
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (ratios against baselines "
                        "measured in the same run).")

BenchDataOpt = Annotated[str | None, typer.Option(help="Event file (default: Taobao stream).")]


@command(app)
def demo(
    data: Annotated[str | None, typer.Option(help="Event file (default: Taobao stream in "
                                             "../shared/data, else the bundled sample).")] = None,
    events: Annotated[int, typer.Option(help="How many events to replay.")] = 20000,
    rate: Annotated[float, typer.Option(help="Events per second.")] = 2000.0,
    hold: Annotated[float, typer.Option(help="Keep the worker and its dashboard up this many "
                                        "seconds after the summary (-1: until Ctrl-C).")] = 0.0,
) -> None:
    """Run broker, worker and a replay of real events; print a summary.

    Decisions, alerts and dead letters are shown live while the events are replayed, with a
    few malformed records and a fraud-like burst injected; the dashboard is at the worker's
    URL while it runs (--hold keeps it up after the summary). The worker serves the models of
    DATA_DIR's registry (`lamstream train recommender` publishes there; the hybrid when it
    won), else the online baseline; the summary says which.
    """
    from stream.devtools.demo import run_demo  # kafka and rich: not for --help

    settings = get_settings()
    with errors():
        run_demo(settings, data=data, events=events, rate=rate, hold=hold)


@command(app)
def simulate(
    data: Annotated[Path | None, typer.Option(help="Event file whose users, items and "
                                              "sessions seed the world (default: the Taobao "
                                              "sample in ../shared/data).")] = None,
    layout: Annotated[str, typer.Option(help="Layout of --data (auto, taobao, yoochoose, "
                                        "otto, jsonl, csv).")] = "auto",
    users: Annotated[int, typer.Option(min=1, help="Concurrent synthetic users.")] = 300,
    rounds: Annotated[int, typer.Option(min=2, help="Rounds (one event per user each).")]
    = 100,
    windows: Annotated[int, typer.Option(min=2, help="Windows of the learning curve.")] = 10,
    arms: Annotated[str, typer.Option(help="Comma-separated: learning, frozen, random.")]
    = "learning,frozen,random",
    seed: Annotated[int, typer.Option(help="Seed of users, answers and policies.")] = 0,
    png: Annotated[Path, typer.Option(help="Where to save the learning curve.")]
    = Path("lamstream-simulate.png"),
    workdir: Annotated[Path | None, typer.Option(help="Per-arm data dirs, logs and logged "
                                                 "feedback (default DATA_DIR/simulate).")]
    = None,
    json_out: JsonOpt = False,
) -> None:
    """Closed loop with synthetic users: learning vs frozen vs random.

    Synthetic users (tastes, item appeal and session lengths from real events) answer
    recommendations through the real topics, worker, feedback join and trainer. Prints and
    saves (PNG) the mean reward per window for the learning system, a frozen model and random
    slates, and the fraction of exploratory slates; each arm's logged feedback is saved for
    `lamstream evaluate policy --feedback FILE`.
    """
    from stream.devtools import simulate as sim  # kafka and matplotlib: not for --help

    settings = get_settings()
    setup_logging(settings)
    cfg = sim.SimConfig(data=data or sim.DEFAULT_DATA, layout=layout, users=users,
                        rounds=rounds, windows=min(windows, rounds), seed=seed,
                        arms=tuple(a.strip() for a in arms.split(",") if a.strip()))
    with errors():
        result = sim.simulate(cfg, settings, workdir or sim.default_workdir(settings), png,
                              Progress("simulate"))
    if json_out:
        typer.echo(json.dumps(result))
    else:
        _print_simulation(result)


def _print_simulation(result: dict[str, Any]) -> None:
    for arm, res in result["arms"].items():
        curve = " ".join(f"{x:.3f}" for x in res["window_reward"])
        expl = " ".join(f"{x:.2f}" for x in res["explored_fraction"])
        typer.echo(f"{arm:>9}: reward per window {curve}")
        typer.echo(f"{'':>9}  exploratory     {expl}   (feedback: {res['feedback_file']})")
    if "learning_gain" in result:
        typer.echo(f"learning: last/first window {result['learning_gain']:.2f}x; versions "
                   f"published {result['arms']['learning']['reranker_versions']}")
    ope = result.get("ope_check")
    if ope:
        sn = ope["snips"]
        typer.echo(f"off-policy: {ope['policy']} estimated from the frozen arm's feedback "
                   f"SNIPS {sn['value']:.3f} [{sn['ci_low']:.3f}, {sn['ci_high']:.3f}], "
                   f"random arm online {ope['random_online']:.3f}")
    typer.echo(f"learning curve: {result['png']}")


def _print_result(result: dict[str, Any], json_out: bool, skip: str = "") -> None:
    """A benchmark's result: one JSON line, or `key: value` lines without the bulky `skip`."""
    if json_out:
        typer.echo(json.dumps(result))
        return
    width = max(len(k) for k in result)
    for k, v in result.items():
        if k != skip:
            typer.echo(f"{k:>{width}}: {v}")


@command(bench_app, "pipeline")
def bench_pipeline(
    events: Annotated[int, typer.Option(help="Events per measured run.")] = 60000,
    json_out: JsonOpt = False,
    data: BenchDataOpt = None,
    predictor: Annotated[str, typer.Option(
        help="What the worker serves: auto (what a worker serves by default: DATA_DIR's "
        "registry, LAMSTREAM_MODEL_NAME), hybrid (a small one is trained for the run when "
        "DATA_DIR has none), baseline (online co-visitation) or both (hybrid and baseline, "
        "one worker run each).")] = "auto",
) -> None:
    """The worker vs raw aiokafka and a naive Faust agent, and latency.

    One run: the same pre-loaded real events through (a) a raw aiokafka passthrough, (b) a
    naive Faust agent and (c) the lamstream worker serving --predictor; then end-to-end
    latency at 2,000 ev/s offered, through the worker and through a bare passthrough (the
    floor). The JSON names the predictor of each worker figure (`predictors`).
    """
    from stream.devtools.bench_pipeline import run_pipeline_bench  # kafka: not for --help

    settings = get_settings()
    with errors():
        result = run_pipeline_bench(settings, n_events=events, data=data,
                                    log=Progress("bench pipeline"), predictor=predictor)
    _print_result(result, json_out)


@command(bench_app, "scale")
def bench_scale(
    workers: Annotated[str, typer.Option(help="Worker counts to run, comma-separated.")]
    = "1,2,3",
    events: Annotated[int, typer.Option(help="Events per configuration.")] = 40000,
    json_out: JsonOpt = False,
    data: BenchDataOpt = None,
) -> None:
    """N workers in one group drain the same events: rate and counts.

    For each worker count (--workers 1,2,3) the same real events are drained by that many
    workers of one consumer group; per-user counts must equal the offline counts and those
    of the first configuration (exit 1 otherwise).
    """
    from stream.devtools.bench_scale import parse_workers, run_scale_bench  # kafka

    settings = get_settings()
    with errors():
        result = run_scale_bench(settings, workers=parse_workers(workers), n_events=events,
                                 data=data, log=Progress("bench scale"))
    if json_out:
        typer.echo(json.dumps(result))
    else:
        for run in result["runs"]:
            typer.echo(f"{run['workers']} worker(s): {run['eps']:>10,.0f} ev/s   counts match: "
                       f"{run['counts_match']}   events per worker: "
                       f"{run['events_per_worker']}")
        typer.echo(result["explanation"])
    if not all(r["counts_match"] for r in result["runs"]):
        raise fail("per-user counts differ between configurations or from the offline counts")


@command(bench_app, "quix")
def bench_quix(
    events: Annotated[int, typer.Option(help="Events each side drains.")] = 30000,
    json_out: JsonOpt = False,
    data: BenchDataOpt = None,
    venv: Annotated[Path, typer.Option(help="The Quix Streams venv (created with python3 -m "
                                       "venv and pip when missing).")] = Path(".venv-quix"),
) -> None:
    """One worker vs one Quix Streams process on the same events.

    The same real events, preloaded into fresh topics, are drained by a minimal stateful
    Quix Streams job (stream/devtools/quix_peer.py: a per-user count in RocksDB state, one
    JSON output per event), run from its own venv, and then by one lamstream worker serving
    what it serves by default. Prints both rates (first to last event processed), their
    ratio and whether every output count is exact (exit 1 otherwise); docs/benchmarks.
    """
    from stream.devtools.bench_quix import run_quix_bench  # kafka: not for --help

    settings = get_settings()
    with errors():
        result = run_quix_bench(settings, n_events=events, data=data, venv=venv,
                                log=Progress("bench quix"))
    _print_result(result, json_out)
    if not (result["quix_exact"] and result["lamstream_exact"]):
        raise fail("an output count is not exact (see quix_outputs and "
                   "lamstream_recommendations)")


@command(bench_app, "soak")
def bench_soak(
    minutes: Annotated[int, typer.Option(help="Minutes of steady load.")] = 20,
    rate: Annotated[float, typer.Option(help="Events per second offered.")] = 1000.0,
    json_out: JsonOpt = False,
    data: BenchDataOpt = None,
    warmup: Annotated[int, typer.Option(help="Minutes before RSS growth is judged (caches "
                                        "and RocksDB buffers fill first).")] = 5,
) -> None:
    """Steady load for minutes: worker RSS, lag and p99 each minute.

    One worker with its default settings and predictor; real events replayed under fresh
    ids at --rate for --minutes. Each minute: the worker's RSS, its group's lag on the events
    topic (end offset minus committed) and the end-to-end p50/p99 of that minute's
    recommendations and the worker's /health; then the RSS growth after the warm-up.
    """
    from stream.devtools.bench_soak import run_soak  # kafka: not for --help

    settings = get_settings()
    with errors():
        result = run_soak(settings, minutes=minutes, rate=rate, data=data,
                          log=Progress("bench soak"), warmup=warmup)
    _print_result(result, json_out, skip="samples")


@command(bench_app, "replay")
def bench_replay(
    json_out: JsonOpt = False,
    data: BenchDataOpt = None,
    events: Annotated[int, typer.Option(help="Events replayed (the first N of the file, "
                                        "by event time).")] = 50_000,
    k: Annotated[int, typer.Option(help="Items per recommendation (top_k) and the K of "
                                   "HR@K.")] = 20,
) -> None:
    """Replay a file through a live worker in time order: its HR@K.

    Each recommendation is scored against the user's next item that differs from the
    trigger's, beside the offline rule "the user's history first, then co-visitation" on
    the same cases. The worker serves what LAMSTREAM_DATA_DIR's registry holds (else the
    online baseline).
    """
    from stream.devtools.bench_replay import run_replay_bench  # kafka: not for --help

    settings = get_settings()
    with errors():
        result = run_replay_bench(settings, data=data, events=events, k=k,
                                  log=Progress("bench replay"))
    _print_result(result, json_out)


RECOMMENDERS = ("auto", *METHODS)


@command(bench_app, "inference")
def bench_inference(
    json_out: JsonOpt = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    data_dir: DataDirOpt = None,
    prefer: Annotated[str, typer.Option(help="Recommender to bench: auto (default: the served "
                                        "one), hybrid, sasrec, gru, covisitation.")] = "auto",
    seconds: Annotated[float, typer.Option(help="Seconds per measured level.")] = 3.0,
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads (default: torch's "
                                                "choice, one per core).")] = None,
) -> None:
    """Predictions/s and latency: per-event calls vs the micro-batcher.

    p50/p99 latency and throughput of batch 1 in a loop against the micro-batcher under
    1..512 concurrent requests, the recommender and the risk model together.
    """
    from model.bench import run_inference_bench  # torch: not for --help

    with errors(missing_field=True, code=OFFLINE_EXIT):
        ddir = resolve_data_dir(data_dir)
        if prefer not in RECOMMENDERS:
            raise UsageError(f"--prefer must be one of {', '.join(RECOMMENDERS)}")
        has = ModelRegistry(ddir).latest("recommender") is not None
        if has and prefer != "auto":
            methods = ModelRegistry(ddir).manifest("recommender").get("methods", [])
            has = prefer in methods
        # the risk model explains the scores that reach the worker's alert threshold, as served
        result = run_inference_bench(ddir if has else None, device=device, seconds=seconds,
                                     prefer=prefer, log=Progress("bench inference"),
                                     threads=threads,
                                     explain_risk_above=get_settings().risk_threshold)
    _print_result(result, json_out, skip="levels")


app.add_typer(bench_app, name="bench")
