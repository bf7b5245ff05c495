"""The code blocks of the README, docs/ and deploy/README.md run (tests/doc_blocks.py says
which and how): python blocks against the broker with a worker behind the `LAMSTREAM_*`
environment, shell blocks with `lamstream` on the PATH; marked blocks are skipped with their
reason."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.devtools.procs import start_worker, stop_worker, wait_healthy
from stream.kafka.admin import ensure_topics
from tests.doc_blocks import REPO, Block, blocks
from tests.helpers import make_settings

pytestmark = pytest.mark.integration

CODE = [b for b in blocks() if b.kind in ("python", "shell")]


@pytest.fixture(scope="module")
def doc_env(bootstrap: str, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[dict[str, str], Path]]:
    """The environment a reader of the docs has: a broker, topics and a worker of one prefix,
    the LAMSTREAM_* variables that name them, and `lamstream` on the PATH (this checkout's)."""
    tmp = tmp_path_factory.mktemp("doc-blocks")
    s = make_settings(bootstrap, f"doc{uuid.uuid4().hex[:6]}.", tmp)
    ensure_topics(s)
    shim = tmp / "bin"
    shim.mkdir()
    (shim / "lamstream").write_text(f'#!/bin/sh\nexec {sys.executable} -m stream.cli "$@"\n')
    (shim / "lamstream").chmod(0o755)
    env = {**os.environ, "LAMSTREAM_BOOTSTRAP_SERVERS": s.bootstrap,
           "LAMSTREAM_TOPIC_PREFIX": s.topic_prefix, "LAMSTREAM_PARTITIONS": str(s.partitions),
           "LAMSTREAM_DATA_DIR": str(tmp / "data"), "PYTHONPATH": str(REPO),
           "PATH": f"{shim}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = start_worker(s, s.data_dir, tmp / "worker.log")
    try:
        wait_healthy(f"http://127.0.0.1:{s.web_port}", proc, 90, tmp / "worker.log")
        yield env, tmp
    finally:
        stop_worker(proc)


@pytest.mark.parametrize("block", CODE, ids=[b.id for b in CODE])
def test_doc_block_runs(block: Block, request: pytest.FixtureRequest) -> None:
    if block.skip is not None:
        pytest.skip(f"{block.id}: {block.skip}")
    env, tmp = request.getfixturevalue("doc_env")
    # one scratch directory per page: a page's blocks build on each other, in order
    cwd = tmp / "pages" / block.page.replace("/", "_")
    cwd.mkdir(parents=True, exist_ok=True)
    cmd = ([sys.executable, "-c", block.body] if block.kind == "python"
           else ["bash", "-euo", "pipefail", "-c", block.body])
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{block.id} did not finish within 90 s:\n{exc.stdout!r}\n{exc.stderr!r}")
    assert r.returncode == 0, (f"{block.id} exited with {r.returncode}:\n{block.body}\n"
                               f"--- stdout\n{r.stdout[-2000:]}\n--- stderr\n{r.stderr[-4000:]}")
