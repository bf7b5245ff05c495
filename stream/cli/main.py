"""The `lamstream` command: the command groups of stream/cli assembled into one typer app."""

from __future__ import annotations

import os
import sys

import typer

from stream.cli import data, export, model, service, tools

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="lamstream: real-time user-behaviour prediction on Kafka.")
app.add_typer(service.app)  # broker, worker, feedback, trainer
app.add_typer(data.app)  # produce, tail, topics, features, schema
app.add_typer(tools.app)  # demo, simulate, bench
app.add_typer(model.train_app, name="train")
app.add_typer(model.evaluate_app, name="evaluate")
app.add_typer(model.model_app, name="model")
app.add_typer(export.export_app, name="export")


def main() -> None:
    """The console script `lamstream` (and `python -m stream.cli`)."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
