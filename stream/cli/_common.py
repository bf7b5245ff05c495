"""What every command group shares: settings, one-line errors, logging, shared options."""

from __future__ import annotations

import inspect
import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer

from model.errors import ModelError
from stream.errors import LamstreamError
from stream.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
FeedbackOpt = Annotated[str, typer.Option(help="Feedback JSONL file, or a topic name "
                                          "(e.g. feedback) read from the beginning.")]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="Data dir holding models/ (default: $LAMSTREAM_DATA_DIR or .lamstream).")]


def command(group: typer.Typer, name: str | None = None) -> Callable[[F], F]:
    """`group.command(name)` with the function's docstring as its help, each paragraph on one
    line: typer's rich help keeps a docstring's line breaks, so the source's wrapping would
    break its sentences wherever the terminal is wider or narrower. The first line is the
    summary `lamstream --help` lists."""
    def register(f: F) -> F:
        paragraphs = [" ".join(p.split()) for p in inspect.cleandoc(f.__doc__ or "").split("\n\n")]
        # short_help: the listing shows the whole first sentence, never click's 45-character cut
        group.command(name, help="\n\n".join(paragraphs), short_help=paragraphs[0])(f)
        return f
    return register


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `error: message` on stderr; raise the returned Exit to stop with `code`."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def say(message: str) -> None:
    """Progress and notes for a person: stderr, so stdout stays the command's output."""
    typer.echo(message, err=True)


def get_settings(**overrides: Any) -> Settings:
    """The Settings of this run (environment + the options given); exit 2 when invalid."""
    with errors(code=OFFLINE_EXIT):
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})


def resolve_data_dir(value: Path | None) -> Path:
    """--data-dir, else LAMSTREAM_DATA_DIR, else .lamstream, for the offline model commands.

    Read on its own (not from Settings) so that training and registry commands work where
    the broker settings are incomplete, as on a laptop with a copy of the models.
    """
    return value if value is not None else Path(os.environ.get("LAMSTREAM_DATA_DIR",
                                                               ".lamstream"))


OFFLINE_EXIT = 2  # invalid settings, and errors of the offline commands (see errors())


@contextmanager
def errors(missing_field: bool = False, code: int = 1) -> Iterator[None]:
    """One clear line and exit `code` for what lamstream and the model side raise on purpose
    (and for bad input files: OSError, ValueError), never a traceback with locals. With
    `missing_field`, a KeyError reads as a record or manifest without that field.

    The codes are the CLI's since its first release: 2 for invalid settings and for the
    offline commands (train, evaluate, model, export, bench inference), where 1 means a
    verdict (a gate that refused); 1 for the service and data commands."""
    try:
        yield
    except typer.Exit:
        raise
    except (LamstreamError, ModelError, OSError, ValueError) as exc:
        raise fail(str(exc), code) from None
    except KeyError as exc:
        if not missing_field:
            raise
        raise fail(f"missing field {exc}", code) from None


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps({"ts": record.created, "level": record.levelname,
                             "logger": record.name, "msg": record.getMessage()}).decode()


def setup_logging(settings: Settings) -> None:
    """The root logger at LOG_LEVEL, as text or JSON lines (LOG_FORMAT), on stderr."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(_JsonLines())
    else:
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: "
                                               "%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)


def sigterm_to_exit() -> None:
    """Make SIGTERM unwind like Ctrl-C so context managers (the broker) clean up."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)
