"""The model side: `lamstream train`, `evaluate` and `model` (the registry)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from model.registry import ModelRegistry
from model.train.progress import Progress
from stream.cli._common import (
    OFFLINE_EXIT,
    DataDirOpt,
    FeedbackOpt,
    JsonOpt,
    command,
    errors,
    resolve_data_dir,
    say,
)
from stream.cli.check import model_check
from stream.cli.policy import evaluate_policy
from stream.errors import LamstreamError, UsageError
from stream.feedback.source import load_feedback
from stream.settings import load_settings

train_app = typer.Typer(no_args_is_help=True, help="Train models from event files and publish "
                        "them to the registry.")
evaluate_app = typer.Typer(no_args_is_help=True, help="Offline evaluation on a temporal split.")
model_app = typer.Typer(no_args_is_help=True,
                        help="The model registry: list, rollback, gate, announce, check.")

DataOpt = Annotated[Path, typer.Option("--data", help="Event file (CSV/TSV/JSONL, any layout "
                                       "`lamstream produce` reads).")]
LayoutOpt = Annotated[str, typer.Option(help="File layout: auto, taobao, yoochoose, otto, "
                                        "jsonl, csv.")]
AnnounceOpt = Annotated[bool, typer.Option(
    "--announce/--no-announce", help="Also send a model-updates record so running workers "
    "(LAMSTREAM_BOOTSTRAP_SERVERS, or the embedded broker's port) swap to the new version "
    "between batches.")]


# --plot draws HR@K for K = 1..PLOT_MAX_K.
PLOT_MAX_K = 50


def _announce(name: str, version: str, action: str = "publish") -> bool:
    """model-updates record for running workers; the registry is the source of truth, so a
    broker that cannot be reached is a warning (announce again later), not a failure."""
    from stream.client import announce_model  # kafka: not for --help

    try:
        settings = load_settings()
        announce_model(settings, name, version, "rollback" if action == "rollback" else
                       "publish")
    except (LamstreamError, OSError, ValueError) as e:
        typer.secho(f"warning: {name} {version} is in the registry but was not announced: {e}"
                    f" (run `lamstream model announce {name} --version {version}` when the "
                    "broker is up)", fg=typer.colors.YELLOW, err=True)
        return False
    say(f"announced {name} {version} on {settings.topic_prefix}model-updates "
         f"({settings.bootstrap})")
    return True


def _train_cfg(epochs: int | None, budget_s: float) -> Any:
    from model.train.neural import TrainConfig  # torch: not for --help

    base = TrainConfig()
    return TrainConfig(epochs=epochs or base.epochs, budget_s=budget_s)


def _print_table(result: dict[str, Any]) -> None:
    methods = result["methods"]
    cols = ["hr@20", "mrr@20", "ndcg@20", "train_s", "infer_ms_per_case"]
    typer.echo(f"{'method':<14}" + "".join(f"{c:>18}" for c in cols))
    for m, row in methods.items():
        mark = " *" if m == result.get("served") else ""
        typer.echo(f"{m + mark:<14}" + "".join(f"{row.get(c, float('nan')):>18}" for c in cols))
    typer.echo(f"served: {result.get('served')}  (* = best hr@20 on the validation slice)")


@command(train_app, "recommender")
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
    """Train the recommenders on one split and publish them.

    Popularity, co-visitation, GRU, SASRec and the hybrid (with and without its sequence
    model) on one temporal split, all published to the registry; the method with the best
    HR@20 on a validation slice before the test part is the one served.
    """
    from model.train.pipeline import train_recommender as run  # torch: not for --help

    with errors(missing_field=True, code=OFFLINE_EXIT):
        version, comp = run(data, resolve_data_dir(data_dir), layout=layout, test=test,
                            cfg=_train_cfg(epochs, budget_s), max_events=max_events,
                            progress=Progress("train recommender"))
    if announce:
        _announce("recommender", version)
    result = {**comp.to_json(), "version": version}
    if json_out:
        typer.echo(json.dumps(result))
    else:
        _print_table(result)
        typer.echo(f"published recommender {version} to {resolve_data_dir(data_dir) / 'models'}")


@command(train_app, "risk")
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
    allow_foreign_features: Annotated[bool, typer.Option(
        help="Publish a net whose input columns the stream does not produce (creditcard.csv) "
             "for offline use: not made latest, and workers refuse it if announced.")] = False,
) -> None:
    """Train the calibrated risk net and publish it to the registry.

    The net is calibrated on held-out rows and explains its scores (attributions); the
    registry keeps its evaluation against the rule baseline and the features it reads. A
    file whose columns are not the stream's features is refused before training.
    """
    from model.train.pipeline import train_risk as run  # torch: not for --help

    with errors(missing_field=True, code=OFFLINE_EXIT):
        version, report = run(data, resolve_data_dir(data_dir), epochs=epochs, split=split,
                              base_rate=base_rate, allow_foreign_features=allow_foreign_features,
                              progress=Progress("train risk"))
    if announce:
        _announce("risk", version)
    if json_out:
        typer.echo(json.dumps({**report, "version": version}))
    else:
        for m, row in report["methods"].items():
            typer.echo(f"{m:<16} " + "  ".join(f"{k} {v}" for k, v in row.items()))
        typer.echo(f"published risk {version} to {resolve_data_dir(data_dir) / 'models'}")


@command(evaluate_app, "recommender")
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
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Also write a PNG of HR@K for K = 1..50 per method to this file "
        "(needs --data).")] = None,
) -> None:
    """HR@20, MRR@20, NDCG@20 and time of every recommender.

    Popularity, co-visitation, GRU, SASRec, hybrid and hybrid_without_sequence, train and
    inference time too, all on the same temporal split; served: the best HR@20 on a validation
    slice before the test part; nothing is published. Without --data: the evaluation stored with the
    latest published recommender.
    """
    with errors(missing_field=True, code=OFFLINE_EXIT):
        if data is None:
            if plot is not None:
                raise UsageError("--plot needs --data: the stored evaluation has no curves")
            reg = ModelRegistry(resolve_data_dir(data_dir))
            version = reg.latest("recommender")
            if version is None:
                raise UsageError(f"no --data and no trained recommender in {reg.root}; "
                                 "run `lamstream train recommender --data FILE` first")
            result = {**reg.manifest("recommender", version)["evaluation"],
                      "source": f"registry recommender {version}"}
        else:
            from model.train.pipeline import evaluate_recommenders  # torch
            from model.train.plot import plot_hit_curves  # matplotlib

            comp = evaluate_recommenders(data, layout=layout, test=test,
                                         cfg=_train_cfg(epochs, budget_s),
                                         max_events=max_events,
                                         progress=Progress("evaluate recommender"),
                                         curve_k=PLOT_MAX_K if plot else 0)
            result = comp.to_json()
            if plot is not None:
                plot_hit_curves(comp.curves, plot, served=comp.served,
                                title=f"HR@K on {comp.split['test_cases']} test cases of "
                                f"{data.name}")
                say(f"wrote {plot}")
    if json_out:
        typer.echo(json.dumps(result))
    else:
        _print_table(result)


@command(evaluate_app, "risk")
def evaluate_risk(
    data: Annotated[Path, typer.Option("--data", help="Labelled file (Fraud_Data.csv or "
                                       "creditcard.csv layout).")],
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 20,
    split: Annotated[str, typer.Option(help="random (stratified) or temporal.")] = "random",
    base_rate: Annotated[float | None, typer.Option(help="Report PR-AUC at this fraud rate "
                                                    "(default: the full dataset's).")] = None,
    json_out: JsonOpt = False,
) -> None:
    """ROC-AUC and PR-AUC of the risk net vs the rule baseline.

    Both are scored on the same held-out rows; nothing is published.
    """
    from model.train.risk import load_labelled, train_and_evaluate_risk  # torch

    with errors(missing_field=True, code=OFFLINE_EXIT):
        _, report = train_and_evaluate_risk(load_labelled(data), epochs=epochs, split=split,
                                            base_rate=base_rate,
                                            progress=Progress("evaluate risk"))
    if json_out:
        typer.echo(json.dumps(report))
    else:
        for m, row in report["methods"].items():
            typer.echo(f"{m:<16} " + "  ".join(f"{k} {v}" for k, v in row.items()))
        typer.echo(f"base rate: {report['base_rate']}")


@command(model_app, "list")
def model_list(data_dir: DataDirOpt = None) -> None:
    """Published models and versions; the latest marked with *."""
    with errors(missing_field=True, code=OFFLINE_EXIT):
        reg = ModelRegistry(resolve_data_dir(data_dir))
        for name, versions in reg.list().items():
            latest = reg.latest(name)
            typer.echo(f"{name}: " + " ".join(v + ("*" if v == latest else "")
                                              for v in versions))


@command(model_app, "rollback")
def model_rollback(name: Annotated[str, typer.Argument(help="recommender, risk or reranker")],
                   data_dir: DataDirOpt = None, announce: AnnounceOpt = True) -> None:
    """Point `latest` of a model back one version and announce it.

    The model-updates record makes running workers serve it from their next batch
    (--no-announce: the registry only).
    """
    with errors(missing_field=True, code=OFFLINE_EXIT):
        v = ModelRegistry(resolve_data_dir(data_dir)).rollback(name)
    typer.echo(f"{name}: latest is now {v}")
    if announce:
        _announce(name, v, "rollback")


@command(model_app, "gate")
def model_gate(
    name: Annotated[str, typer.Argument(help="reranker (the model the trainer gates)")],
    candidate: Annotated[Path, typer.Option(help="Candidate artifact dir (reranker.pt + "
                                            "config.json): a registry version, the trainer's "
                                            "DATA_DIR/trainer/candidate, ...")],
    feedback: FeedbackOpt,
    data_dir: DataDirOpt = None, announce: AnnounceOpt = True, json_out: JsonOpt = False,
) -> None:
    """Publish a candidate only if it beats the serving version.

    The candidate and the serving version are compared on logged feedback exactly as the
    trainer's gate does (LAMSTREAM_TRAINER_MARGIN, _CONFIDENCE); it is published and
    announced only if it wins. Exit code 1 when the gate refuses it.
    """
    from stream.trainer.loop import gate_candidate  # torch: not for --help

    with errors(missing_field=True, code=OFFLINE_EXIT):
        if name != "reranker":
            raise UsageError("only the reranker is gated (the trainer's model)")
        settings = load_settings()
        settings = settings.model_copy(update={"data_dir": resolve_data_dir(data_dir)})
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


@command(model_app, "announce")
def model_announce(
    name: Annotated[str, typer.Argument(help="recommender, risk or reranker")],
    version: Annotated[str | None, typer.Option(help="Version to serve (default: latest).")]
    = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Tell running workers to serve a published version.

    A model-updates record: running workers load that version from their data dir (it must
    be published there) and serve it from their next batch, dropping no events.
    """
    with errors(missing_field=True, code=OFFLINE_EXIT):
        reg = ModelRegistry(resolve_data_dir(data_dir))
        v = version or reg.latest(name)
        if v is None:
            raise UsageError(f"no published {name} model in {reg.root}")
        reg.path(name, v)  # must exist
    if not _announce(name, v):
        raise typer.Exit(1)


command(evaluate_app, "policy")(evaluate_policy)
command(model_app, "check")(model_check)
