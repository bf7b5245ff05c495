"""CLI commands of the model side: train, evaluate, bench inference, registry (model)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

train_app = typer.Typer(no_args_is_help=True, help="Train models from event files and publish "
                        "them to the model registry.")
evaluate_app = typer.Typer(no_args_is_help=True, help="Offline evaluation on a temporal split.")
model_app = typer.Typer(no_args_is_help=True, help="The model registry: list, show, rollback.")

DataOpt = Annotated[Path, typer.Option("--data", help="Event file (CSV/TSV/JSONL, any layout "
                                       "`lamstream produce` reads).")]
LayoutOpt = Annotated[str, typer.Option(help="File layout: auto, taobao, yoochoose, otto, "
                                        "jsonl, csv.")]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="Data dir holding models/ (default: $LAMSTREAM_DATA_DIR or .lamstream).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
AnnounceOpt = Annotated[bool, typer.Option(
    "--announce/--no-announce", help="Also send a model-updates record so running workers "
    "(LAMSTREAM_BOOTSTRAP_SERVERS, or the embedded broker's port) swap to the new version "
    "between batches.")]


def _data_dir(value: Path | None) -> Path:
    return value if value is not None else Path(os.environ.get("LAMSTREAM_DATA_DIR",
                                                               ".lamstream"))


def _say(message: str) -> None:
    typer.echo(message, err=True)


def _announce(name: str, version: str, action: str = "publish") -> bool:
    """model-updates record for running workers; the registry is the source of truth, so a
    broker that cannot be reached is a warning (announce again later), not a failure."""
    from stream.client import announce_model
    from stream.errors import LamstreamError
    from stream.settings import load_settings

    try:
        settings = load_settings()
        announce_model(settings, name, version, "rollback" if action == "rollback" else
                       "publish")
    except (LamstreamError, OSError, ValueError) as e:
        typer.secho(f"warning: {name} {version} is in the registry but was not announced: {e}"
                    f" (run `lamstream model announce {name} --version {version}` when the "
                    "broker is up)", fg=typer.colors.YELLOW, err=True)
        return False
    _say(f"announced {name} {version} on {settings.topic_prefix}model-updates "
         f"({settings.bootstrap})")
    return True


@contextmanager
def _errors() -> Iterator[None]:
    """One clear line and exit code 2 instead of a traceback."""
    from model.errors import RegistryError
    try:
        yield
    except typer.Exit:
        raise
    except (OSError, ValueError, KeyError, RegistryError) as e:
        msg = str(e) if not isinstance(e, KeyError) else f"missing field {e}"
        typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _train_cfg(epochs: int | None, budget_s: float) -> Any:
    from model.train.neural import TrainConfig
    base = TrainConfig()
    return TrainConfig(epochs=epochs or base.epochs, budget_s=budget_s)


def _print_table(result: dict[str, Any]) -> None:
    methods = result["methods"]
    cols = ["hr@20", "mrr@20", "ndcg@20", "train_s", "infer_ms_per_case"]
    typer.echo(f"{'method':<14}" + "".join(f"{c:>18}" for c in cols))
    for m, row in methods.items():
        mark = " *" if m == result.get("served") else ""
        typer.echo(f"{m + mark:<14}" + "".join(f"{row.get(c, float('nan')):>18}" for c in cols))
    typer.echo(f"served: {result.get('served')}  (* = best ndcg@20)")


@train_app.command("recommender")
def train_recommender(
    data: DataOpt,
    layout: LayoutOpt = "auto",
    data_dir: DataDirOpt = None,
    epochs: Annotated[int | None, typer.Option(help="Max epochs of the neural nets (default "
                                               "30, cut by --budget-s).")] = None,
    budget_s: Annotated[float, typer.Option(help="Training time per neural net, seconds.")]
    = 120.0,
    test: Annotated[Path | None, typer.Option(help="Separate test file (default: last 20% "
                                              "of --data's time range).")] = None,
    max_events: Annotated[int | None, typer.Option(help="Read at most this many events.")]
    = None,
    json_out: JsonOpt = False,
    announce: AnnounceOpt = False,
) -> None:
    """Train popularity, co-visitation, GRU and SASRec on one temporal split, publish all to
    the registry; the method with the best NDCG@20 on the test part is the one served."""
    from model.train.pipeline import train_recommender as run

    with _errors():
        version, comp = run(data, _data_dir(data_dir), layout=layout, test=test,
                            cfg=_train_cfg(epochs, budget_s), max_events=max_events,
                            progress=_say)
    if announce:
        _announce("recommender", version)
    result = {**comp.to_json(), "version": version}
    if json_out:
        typer.echo(json.dumps(result))
    else:
        _print_table(result)
        typer.echo(f"published recommender {version} to {_data_dir(data_dir) / 'models'}")


@train_app.command("risk")
def train_risk(
    data: Annotated[Path, typer.Option("--data", help="Labelled file: Kaggle Fraud_Data.csv "
                                       "or ULB creditcard.csv layout.")],
    data_dir: DataDirOpt = None,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 20,
    split: Annotated[str, typer.Option(help="random (stratified) or temporal.")] = "random",
    base_rate: Annotated[float | None, typer.Option(help="Fraud rate where it will serve: "
                                                    "shifts the calibrated prior.")] = None,
    json_out: JsonOpt = False,
    announce: AnnounceOpt = False,
) -> None:
    """Train the risk net (calibrated, with attributions) and publish it to the registry."""
    from model.train.pipeline import train_risk as run

    with _errors():
        version, report = run(data, _data_dir(data_dir), epochs=epochs, split=split,
                              base_rate=base_rate, progress=_say)
    if announce:
        _announce("risk", version)
    if json_out:
        typer.echo(json.dumps({**report, "version": version}))
    else:
        for m, row in report["methods"].items():
            typer.echo(f"{m:<16} " + "  ".join(f"{k} {v}" for k, v in row.items()))
        typer.echo(f"published risk {version} to {_data_dir(data_dir) / 'models'}")


@evaluate_app.command("recommender")
def evaluate_recommender(
    data: Annotated[Path | None, typer.Option("--data", help="Event file to evaluate on "
                                              "(default: print the evaluation stored with the "
                                              "latest published recommender).")] = None,
    layout: LayoutOpt = "auto",
    data_dir: DataDirOpt = None,
    test: Annotated[Path | None, typer.Option(help="Separate test file.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Max epochs of the neural nets.")] = None,
    budget_s: Annotated[float, typer.Option(help="Training time per neural net, seconds.")]
    = 120.0,
    max_events: Annotated[int | None, typer.Option(help="Read at most this many events.")]
    = None,
    json_out: JsonOpt = False,
) -> None:
    """HR@20, MRR@20, NDCG@20 and train/inference time of popularity, co-visitation, GRU and
    SASRec, all on the same temporal split (nothing is published)."""
    with _errors():
        if data is None:
            from model.registry import ModelRegistry
            reg = ModelRegistry(_data_dir(data_dir))
            version = reg.latest("recommender")
            if version is None:
                raise ValueError(f"no --data and no trained recommender in {reg.root}; "
                                 "run `lamstream train recommender --data FILE` first")
            result = {**reg.manifest("recommender", version)["evaluation"],
                      "source": f"registry recommender {version}"}
        else:
            from model.train.pipeline import evaluate_recommenders
            comp = evaluate_recommenders(data, layout=layout, test=test,
                                         cfg=_train_cfg(epochs, budget_s),
                                         max_events=max_events, progress=_say)
            result = comp.to_json()
    if json_out:
        typer.echo(json.dumps(result))
    else:
        _print_table(result)


@evaluate_app.command("risk")
def evaluate_risk(
    data: Annotated[Path, typer.Option("--data", help="Labelled file (Fraud_Data.csv or "
                                       "creditcard.csv layout).")],
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 20,
    split: Annotated[str, typer.Option(help="random (stratified) or temporal.")] = "random",
    base_rate: Annotated[float | None, typer.Option(help="Report PR-AUC at this fraud rate "
                                                    "(default: the full dataset's).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """ROC-AUC and PR-AUC of the risk net vs the rule baseline on the same held-out rows."""
    from model.train.risk import load_labelled, train_and_evaluate_risk

    with _errors():
        _, report = train_and_evaluate_risk(load_labelled(data), epochs=epochs, split=split,
                                            base_rate=base_rate, progress=_say)
    if json_out:
        typer.echo(json.dumps(report))
    else:
        for m, row in report["methods"].items():
            typer.echo(f"{m:<16} " + "  ".join(f"{k} {v}" for k, v in row.items()))
        typer.echo(f"base rate: {report['base_rate']}")


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
    """Predictions/s and p50/p99 latency: per-event calls (batch 1 in a loop) vs the
    micro-batcher under 1..512 concurrent requests, recommender + risk model together."""
    from model.bench import run_inference_bench
    from model.registry import ModelRegistry

    with _errors():
        ddir = _data_dir(data_dir)
        if prefer not in ("auto", "covisitation", "popularity", "gru", "sasrec", "hybrid",
                          "hybrid_without_sequence"):
            raise ValueError("--prefer must be auto, hybrid, hybrid_without_sequence, sasrec, "
                             "gru, covisitation or popularity")
        has = ModelRegistry(ddir).latest("recommender") is not None
        if has and prefer != "auto":
            methods = ModelRegistry(ddir).manifest("recommender").get("methods", [])
            has = prefer in methods
        result = run_inference_bench(ddir if has else None, device=device, seconds=seconds,
                                     prefer=prefer, log=_say, threads=threads)
    if json_out:
        typer.echo(json.dumps(result))
    else:
        for k, v in result.items():
            if k != "levels":
                typer.echo(f"{k:>18}: {v}")


@model_app.command("list")
def model_list(data_dir: DataDirOpt = None) -> None:
    """Published models and versions; the latest marked with *."""
    from model.registry import ModelRegistry

    with _errors():
        reg = ModelRegistry(_data_dir(data_dir))
        for name, versions in reg.list().items():
            latest = reg.latest(name)
            typer.echo(f"{name}: " + " ".join(v + ("*" if v == latest else "")
                                              for v in versions))


@model_app.command("rollback")
def model_rollback(name: Annotated[str, typer.Argument(help="recommender, risk or reranker")],
                   data_dir: DataDirOpt = None, announce: AnnounceOpt = True) -> None:
    """Point `latest` of a model back one version and announce it on model-updates, so
    running workers serve it from their next batch (--no-announce: registry only)."""
    from model.registry import ModelRegistry

    with _errors():
        v = ModelRegistry(_data_dir(data_dir)).rollback(name)
    typer.echo(f"{name}: latest is now {v}")
    if announce:
        _announce(name, v, "rollback")


@model_app.command("gate")
def model_gate(
    name: Annotated[str, typer.Argument(help="reranker (the model the trainer gates)")],
    candidate: Annotated[Path, typer.Option(help="Candidate artifact dir (reranker.pt + "
                                            "config.json): a registry version, the trainer's "
                                            "DATA_DIR/trainer/candidate, ...")],
    feedback: Annotated[str, typer.Option(help="Feedback JSONL file, or a topic name "
                                          "(e.g. feedback) read from the beginning.")],
    data_dir: DataDirOpt = None, announce: AnnounceOpt = True, json_out: JsonOpt = False,
) -> None:
    """Compare a candidate with the serving version on logged feedback, exactly as the
    trainer's gate does (LAMSTREAM_TRAINER_MARGIN, _CONFIDENCE), and publish + announce it
    only if it wins. Exit code 1 when the gate refuses it."""
    from stream.feedback.source import load_feedback
    from stream.settings import load_settings
    from stream.trainer.loop import gate_candidate

    with _errors():
        if name != "reranker":
            raise ValueError("only the reranker is gated (the trainer's model)")
        settings = load_settings()
        settings = settings.model_copy(update={"data_dir": _data_dir(data_dir)})
        result = gate_candidate(settings, candidate, load_feedback(feedback))
    gate = result["gate"]
    if json_out:
        typer.echo(json.dumps(result))
    else:
        verdict = "published as " + result["published"] if "published" in result else "refused"
        typer.echo(f"{verdict}: {gate['reason']} (n={gate['n']}, serving {result['serving']})")
    if "published" in result and announce:
        _announce(name, result["published"])
    if "published" not in result:
        raise typer.Exit(1)


@model_app.command("announce")
def model_announce(
    name: Annotated[str, typer.Argument(help="recommender, risk or reranker")],
    version: Annotated[str | None, typer.Option(help="Version to serve (default: latest).")]
    = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Send a model-updates record: running workers load that version from their data dir
    (it must be published there) and serve it from their next batch, dropping no events."""
    from model.registry import ModelRegistry

    with _errors():
        reg = ModelRegistry(_data_dir(data_dir))
        v = version or reg.latest(name)
        if v is None:
            raise ValueError(f"no published {name} model in {reg.root}")
        reg.path(name, v)  # must exist
    if not _announce(name, v):
        raise typer.Exit(1)
