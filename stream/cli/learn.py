"""CLI commands of the learning loop: the continuous trainer and the closed-loop simulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import orjson
import typer


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
    """Continuous trainer: consume `feedback` and `risk-feedback`, fine-tune the reranker
    and the risk model on replay buffers, score every new batch before training on it
    (prequential), and publish + announce a new version only when it beats the serving one
    on the held-out window (reranker: LAMSTREAM_TRAINER_MARGIN, _CONFIDENCE, _WINDOW,
    _GATE_EVERY; risk: ROC-AUC, LAMSTREAM_TRAINER_RISK_MARGIN, _RISK_MIN_POSITIVES,
    _RISK_WINDOW, _RISK_GATE_EVERY). State (weights, optimizer, replay, window) survives
    restarts under DATA_DIR/trainer; `lamstream model rollback reranker|risk` steps back a
    version."""
    from stream.cli.main import _errors, _settings, broker_for, setup_logging
    from stream.trainer.loop import run_trainer, train_from_file

    settings = _settings()
    setup_logging(settings)
    with _errors():
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
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Closed loop: synthetic users (tastes, item appeal and session lengths from real events)
    answer recommendations through the real topics, worker, feedback join and trainer. Prints
    and saves (PNG) the mean reward per window for the learning system, a frozen model and
    random slates, and the fraction of exploratory slates; each arm's logged feedback is
    saved for `lamstream evaluate policy --feedback FILE`."""
    from stream.cli.main import _errors, _settings, setup_logging
    from stream.devtools.simulate import DEFAULT_DATA, SimConfig, default_workdir
    from stream.devtools.simulate import simulate as run

    settings = _settings()
    setup_logging(settings)
    cfg = SimConfig(data=data or DEFAULT_DATA, layout=layout, users=users, rounds=rounds,
                    windows=min(windows, rounds), seed=seed,
                    arms=tuple(a.strip() for a in arms.split(",") if a.strip()))

    def log(msg: str) -> None:
        typer.echo(msg, err=True)

    with _errors():
        result = run(cfg, settings, workdir or default_workdir(settings), png, log)
    if json_out:
        typer.echo(json.dumps(result))
        return
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
