"""The `lamstream` command: the command groups of stream/cli assembled into one typer app."""

from __future__ import annotations

import importlib.metadata
import os
import sys
from typing import Annotated

import typer

from stream.cli import data, doctor, export, model, service, tools

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="lamstream: real-time user-behaviour prediction on Kafka.")
app.add_typer(service.app)  # broker, worker, feedback, trainer
app.add_typer(data.app)  # produce, tail, topics, features, schema
app.add_typer(tools.app)  # demo, simulate, bench
app.add_typer(model.train_app, name="train")
app.add_typer(model.evaluate_app, name="evaluate")
app.add_typer(model.model_app, name="model")
app.add_typer(export.export_app, name="export")
app.add_typer(doctor.app)  # doctor


def _print_version(value: bool) -> None:
    if value:
        try:
            version = importlib.metadata.version("lamstream")
        except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
            version = "unknown (not installed)"
        typer.echo(f"lamstream {version}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print lamstream's version and exit.")] = False) -> None:
    """lamstream: real-time user-behaviour prediction on Kafka."""


def main() -> None:
    """The console script `lamstream` (and `python -m stream.cli`)."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
