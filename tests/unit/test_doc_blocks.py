"""Every fenced block of the README and docs says how it is checked (tests/doc_blocks.py):
code that tests/integration/test_doc_blocks.py runs, text that is not code, or a skip with
its reason; the skips are listed in the output."""

from __future__ import annotations

import pytest

from tests.doc_blocks import Block, blocks, parse

PAGE = """intro
<!-- doc-test: skip needs a cluster -->
```bash
kubectl apply -k x
```
```python
print("hi")
```
- a list item:

  ```text
  output
  ```

```
no language
```
````python
```nested```
````
"""


def test_blocks_are_found_with_their_language_and_skip_marker() -> None:
    got = parse(PAGE, "p.md")
    assert [(b.line, b.lang, b.kind, b.skip) for b in got] == [
        (3, "bash", "shell", "needs a cluster"), (6, "python", "python", None),
        (11, "text", "text", None), (15, "", None, None), (18, "python", "python", None)]
    assert got[1].body == 'print("hi")\n' and got[2].body == "output\n"
    assert got[4].body == "```nested```\n"
    assert got[0].id == "p.md:3"


def test_every_block_is_code_that_runs_text_or_skipped_with_a_reason(
        capsys: pytest.CaptureFixture[str]) -> None:
    found = blocks()
    unknown = [f"{b.id} ```{b.lang or '(none)'}" for b in found if b.kind is None]
    assert not unknown, (
        "give each block a language: python or bash (run by tests/integration/"
        "test_doc_blocks.py), text (output, diagrams), or mark a block that cannot run here "
        "with <!-- doc-test: skip REASON --> on the line above its fence: " + ", ".join(unknown))
    skipped: list[Block] = [b for b in found if b.skip is not None]
    assert all(b.kind in ("python", "shell") for b in skipped), "only code blocks are skipped"
    run = [b for b in found if b.kind in ("python", "shell") and b.skip is None]
    assert run, "no doc block is run at all"
    with capsys.disabled():
        print(f"\ndoc blocks: {len(run)} run by tests/integration/test_doc_blocks.py, "
              f"{len(skipped)} skipped:")
        for b in skipped:
            print(f"  skipped {b.id}: {b.skip}")
