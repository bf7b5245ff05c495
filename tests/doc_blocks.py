"""The fenced code blocks of the README, docs/ and deploy/README.md, and how each is checked.

Every block declares its language on the opening fence:
- `python` and `bash` (`sh`, `shell`) blocks are code: tests/integration/test_doc_blocks.py
  runs them (python blocks with a broker and a worker behind the `LAMSTREAM_*` environment,
  shell blocks with `lamstream` on the PATH), each page's blocks in order in one scratch
  directory;
- `text` blocks are not code (command output, diagrams, file trees) and are not run;
- a code block that cannot run here (a cluster, Docker, minutes of training) carries a
  marker on the line right above its fence, and is reported as skipped with the reason:

      <!-- doc-test: skip needs a Kubernetes cluster -->
      ```bash

A block with any other language, or none, fails tests/unit/test_doc_blocks.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*skip\s+(?P<reason>\S.*?)\s*-->\s*$")
KINDS = {"python": "python", "bash": "shell", "sh": "shell", "shell": "shell", "text": "text"}


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repo root
    line: int  # of the opening fence, 1-based
    lang: str
    body: str
    skip: str | None  # the marker's reason

    @property
    def kind(self) -> str | None:
        """python, shell or text; None for a language the runner does not know."""
        return KINDS.get(self.lang)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def pages(repo: Path = REPO) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").rglob("*.md")),
            repo / "deploy" / "README.md"]


def parse(text: str, page: str) -> list[Block]:
    """The fenced blocks of one Markdown text, with the skip marker above each (if any)."""
    lines = text.splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.groups()
        end = i + 1
        while end < len(lines) and not (lines[end].strip().startswith(fence[0] * len(fence))
                                        and not lines[end].strip().strip(fence[0])):
            end += 1
        body = "\n".join(ln[len(indent):] if ln.startswith(indent) else ln
                         for ln in lines[i + 1:end])
        marker = MARKER.match(lines[i - 1]) if i > 0 else None
        out.append(Block(page, i + 1, lang.lower(), body + "\n",
                         marker["reason"] if marker else None))
        i = end + 1
    return out


def blocks(repo: Path = REPO) -> list[Block]:
    """Every fenced block of every page, in page order."""
    return [b for p in pages(repo) for b in parse(p.read_text(), str(p.relative_to(repo)))]
