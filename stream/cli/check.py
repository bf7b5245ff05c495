"""`lamstream model check`: a user's own model against the Predictor contract, in plain words."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer

from stream.cli._common import OFFLINE_EXIT, JsonOpt, errors
from stream.errors import UsageError

__all__ = ["model_check"]

SpecArg = Annotated[str, typer.Argument(
    metavar="PACKAGE.MODULE:FACTORY", help="Your factory: a callable that returns your "
    "Predictor (the value LAMSTREAM_PREDICTOR would take).")]


def model_check(spec: SpecArg, json_out: JsonOpt = False) -> None:
    """Check your own model against the contract the worker relies on.

    Imports the factory (the working directory is searched too), calls it and asks the
    predictor about a fixed set of contexts (model.testing.check_predictor): each rule is
    printed as ok or FAIL, with what went wrong in plain words. Exit 0 when every rule
    holds, 1 when one is broken, 2 when the factory cannot be imported or called.
    """
    from model.testing import CONTRACT_RULES, check_predictor, learns_online
    from stream.worker.custom import call_factory, import_factory

    with errors(code=OFFLINE_EXIT):
        predictor = call_factory(import_factory(spec, UsageError), spec, error=UsageError)
    try:
        failed = {f.rule: f.message for f in check_predictor(predictor)}
    finally:
        close = getattr(predictor, "close", None)
        if callable(close):
            close()
    skipped = ["deterministic", "batch_of_one"] if learns_online(predictor) else []
    report: dict[str, Any] = {
        "spec": spec, "name": getattr(predictor, "name", None),
        "version": getattr(predictor, "version", None), "ok": not failed,
        "failed": [{"rule": r, "expects": CONTRACT_RULES[r], "message": m}
                   for r, m in failed.items()],
        "passed": [r for r in CONTRACT_RULES if r not in failed and r not in skipped],
        "skipped": skipped}
    typer.echo(orjson.dumps(report).decode() if json_out else _text(report))
    if failed:
        raise typer.Exit(1)


def _text(report: dict[str, Any]) -> str:
    """The report for a person: one line per rule, the failures with what they expect."""
    from model.testing import CONTRACT_RULES

    lines = [f"{report['spec']}: {report['name']} {report['version']}"]
    failed = {f["rule"]: f for f in report["failed"]}
    for rule, expects in CONTRACT_RULES.items():
        if rule in failed:
            lines += [f"  FAIL  {rule}: {failed[rule]['message']}",
                      f"        the rule: {expects}"]
        elif rule in report["skipped"]:
            lines.append(f"  skip  {rule} (the predictor learns online)")
        else:
            lines.append(f"  ok    {rule}")
    n = len(CONTRACT_RULES) - len(report["skipped"])
    lines.append(f"{n - len(failed)} of {n} rules hold" + (
        "" if failed else ": the worker can serve it (LAMSTREAM_PREDICTOR="
        f"{report['spec']})"))
    return "\n".join(lines)
