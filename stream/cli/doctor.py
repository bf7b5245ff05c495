"""`lamstream doctor`: what is wrong with this deployment, and the command that fixes it."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from stream.cli._common import JsonOpt, command, get_settings

app = typer.Typer()

_MARK = {"ok": "ok     ", "warning": "WARN   ", "problem": "PROBLEM"}


@command(app)
def doctor(
    json_out: JsonOpt = False,
    worker: Annotated[list[str] | None, typer.Option(
        "--worker", help="A worker's URL (http://host:port) to ask for /health; repeat for "
        "each worker. Default: the one this shell's LAMSTREAM_WEB_HOST/_WEB_PORT name.")]
    = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker and for each "
                                           "worker.")] = 10.0,
) -> None:
    """Check the broker, topics, groups, lag, registry and workers.

    Connects with this shell's LAMSTREAM_* settings (TLS and SASL included) and checks: the
    broker answers; every topic exists with its partitions and replication; events and the
    outputs (recommendations, risk-alerts, decisions) have the same partition count; each
    process's consumer group, its members and its lag per partition (end offset minus
    committed); what the model registry in LAMSTREAM_DATA_DIR holds; each worker's /health,
    the version it serves and the settings it runs with. Each problem comes with the command
    that fixes it. Exit 0 when nothing is a problem (warnings allowed), 1 otherwise.
    """
    from stream.doctor import diagnose  # kafka: not for --help

    settings = get_settings()
    report = diagnose(settings, worker or [], timeout)
    if json_out:
        typer.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_NON_STR_KEYS).decode())
    else:
        versions = ", ".join(f"{k} {v or '-'}" for k, v in report.versions.items())
        typer.echo(f"lamstream doctor: Kafka at {report.bootstrap}\nversions: {versions}")
        for f in report.findings:
            typer.echo(f"  {_MARK[f.status]}  {f.check}: {f.message}")
            if f.fix and f.status != "ok":
                typer.echo(f"           fix: {f.fix}")
        problems = sum(f.status == "problem" for f in report.findings)
        warnings = sum(f.status == "warning" for f in report.findings)
        typer.echo(f"{problems} problem(s), {warnings} warning(s)")
    if not report.ok:
        raise typer.Exit(1)
