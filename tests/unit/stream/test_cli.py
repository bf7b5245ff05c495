"""The CLI's shape: one-line summaries, one-line errors, and devtools that never import it."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from stream.cli.main import app

ROOT = Path(__file__).resolve().parents[3]


def _commands(command: Any, path: str = "lamstream") -> Iterator[tuple[str, Any]]:
    for name, sub in getattr(command, "commands", {}).items():
        yield f"{path} {name}", sub
        yield from _commands(sub, f"{path} {name}")


def test_every_command_lists_a_one_line_summary() -> None:
    commands = list(_commands(typer.main.get_command(app)))
    assert len(commands) > 25
    for path, command in commands:
        summary = (command.help or "").split("\n\n")[0]
        # 64 columns fit the listing of an 80-column terminal without wrapping
        assert summary and "\n" not in summary and len(summary) <= 64, (path, summary)
        assert all("\n" not in p for p in (command.help or "").split("\n\n")), path


def test_top_level_help_lists_each_command_on_one_line() -> None:
    out = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80"}).output
    panel = out.split("─ Commands ")[1].split("╰")[0].splitlines()[1:]
    names = [line.split()[1] for line in panel]
    assert names[:4] == ["broker", "worker", "feedback", "trainer"] and len(names) == 17
    assert all(line[2] != " " for line in panel), out  # no line continues the one above


def _listed(path: list[str]) -> dict[str, str]:
    """{command: the summary its group's --help lists}, read from a wide terminal's output."""
    out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"}).output
    rows = out.split("─ Commands ")[1].split("╰")[0].splitlines()[1:]
    return {name: summary for name, summary in (row.strip("│ ").split(None, 1) for row in rows)}


def _commands_of(group: Any) -> dict[str, Any]:
    return dict(getattr(group, "commands", {}))


def test_each_listed_summary_is_the_whole_first_sentence() -> None:
    """`lamstream --help` and each group's list show one whole sentence per command: the
    first paragraph of its help, not cut (click shortens to 45 characters with "...")."""
    root = typer.main.get_command(app)
    groups = [([], root)] + [([name], sub) for name, sub in _commands_of(root).items()
                             if _commands_of(sub)]
    assert len(groups) >= 6
    for path, group in groups:
        listed = _listed(path)
        assert set(listed) == set(_commands_of(group)), path
        for name, sub in _commands_of(group).items():
            want = (sub.help or "").split("\n\n")[0].strip()
            assert listed[name].strip() == want, (path, name, listed[name])
            assert want.endswith(".") and "..." not in want and "\n" not in want, (path, name)


def test_errors_are_one_line_with_the_documented_exit_codes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAMSTREAM_PARTITIONS", "0")  # a SettingsError
    r = CliRunner().invoke(app, ["tail", "events", "--timeout", "1"])
    assert r.exit_code == 2 and "Traceback" not in r.output  # settings: 2, as since 0.1
    assert r.output.strip().splitlines() == [
        "error: invalid settings: LAMSTREAM_PARTITIONS: Input should be greater than or "
        "equal to 1"]
    monkeypatch.delenv("LAMSTREAM_PARTITIONS")
    r = CliRunner().invoke(app, ["bench", "scale", "--workers", "0"])  # a UsageError
    assert r.exit_code == 1 and r.output.strip() == "error: --workers needs counts >= 1, got '0'"
    r = CliRunner().invoke(app, ["evaluate", "policy", "--feedback",  # a ConfigError
                                 str(_feedback(tmp_path)), "--policy", "nope"])
    assert r.exit_code == 2 and r.output.startswith("error: ") and len(r.output.splitlines()) == 1
    r = CliRunner().invoke(app, ["produce", "f.csv", "--map", "user_id"])
    assert r.exit_code == 1 and r.output.strip() == "error: --map takes field=column, got 'user_id'"
    assert CliRunner().invoke(app, ["tail"]).exit_code == 2  # click: a missing argument


def _feedback(tmp_path: Path) -> Path:
    path = tmp_path / "feedback.jsonl"
    path.write_text('{"rec_id": "r1", "user_key": "u", "reward": 0}\n')
    return path


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_devtools_never_import_the_cli() -> None:
    """The CLI runs the tools; a tool that imported the CLI's helpers closed a cycle."""
    files = sorted((ROOT / "stream" / "devtools").glob("*.py"))
    assert len(files) > 5
    for path in files:
        cli = {m for m in _imports(path) if m == "stream.cli" or m.startswith("stream.cli.")}
        assert not cli, path.name


def test_python_dash_m_stream_cli_is_the_lamstream_command() -> None:
    main = ROOT / "stream" / "cli" / "__main__.py"
    assert "stream.cli.main" in _imports(main)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'lamstream = "stream.cli.main:main"' in pyproject
