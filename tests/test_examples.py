"""Every code example of the README and the documentation site runs as written.

A ```python block is an example: it runs here, in a fresh namespace, within its own
deadline, and must leave no thread or descriptor behind (the ``no_leaks`` fixture). A
```py block is a sketch that needs what a test cannot have (a real remote server, a
signature summary): it is shown, not run. Fences inside other blocks (a
```text block quoting one, a four-backtick block) are not examples.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

#: Seconds one example may take (each runs in well under one on a quiet machine).
EXAMPLE_DEADLINE = 30

#: The languages a fence may name. Anything else is most likely a typo of ``python``
#: (```pyhton, ```Python3) that would silently take an example out of the run.
LANGUAGES = frozenset({"", "python", "py", "go", "sh", "console", "text", "toml", "json"})

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*?)[ \t]*$")


@attrs.frozen
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int  # the 1-based line of its first line of code
    language: str
    source: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> Iterator[Block]:
    """The fenced code blocks of ``path``, dedented to their fence's indentation (a block
    inside a list item or a tab is indented)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    number = 0
    while number < len(lines):
        opening = _FENCE.match(lines[number])
        number += 1
        if opening is None:
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].split(" ", 1)[0].split("{", 1)[0].strip().lower()
        start = number
        body: list[str] = []
        while number < len(lines):
            closing = _FENCE.match(lines[number])
            number += 1
            if (
                closing is not None
                and not closing["info"]
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
            ):
                break
            line = lines[number - 1]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
        else:
            raise AssertionError(f"{path}:{start}: a code block is never closed")
        yield Block(path, start + 1, language, "\n".join(body) + "\n")


def sources() -> list[Path]:
    """README.md and every page of the site."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def examples() -> list[Block]:
    return [block for path in sources() for block in blocks(path) if block.language == "python"]


EXAMPLES = examples()


def example_id(block: Block) -> str:
    """``README.md#3``: the file and the example's number in it."""
    same = [b for b in EXAMPLES if b.path == block.path]
    return f"{block.path.relative_to(ROOT)}#{same.index(block) + 1}"


def run(block: Block) -> dict[str, object]:
    """Run ``block`` as a script whose tracebacks point at its lines in the Markdown file."""
    code = compile("\n" * (block.line - 1) + block.source, str(block.path), "exec")
    namespace: dict[str, object] = {"__name__": "__example__"}
    exec(code, namespace)
    return namespace


@pytest.mark.timeout(EXAMPLE_DEADLINE)
@pytest.mark.parametrize("block", EXAMPLES, ids=[example_id(b) for b in EXAMPLES])
def test_example_runs_as_written(block: Block) -> None:
    run(block)


def test_the_readme_opens_with_an_example_that_prints_stats(capsys: pytest.CaptureFixture[str]):
    first = next(b for b in EXAMPLES if b.path == README)
    assert README.read_text().index(first.source) < 1500, "the first example must sit near the top"
    run(first)
    assert "PoolStats(" in capsys.readouterr().out


def test_every_page_of_the_guides_is_collected_and_has_examples() -> None:
    """A guide with no example to run is a guide whose claims nothing checks (the API
    reference pages render docstrings)."""
    without = {
        "docs/reference/gocp.md",
        "docs/reference/testing.md",
        "docs/reference/prometheus.md",
        "docs/reference/aio.md",
    }
    pages = {str(path.relative_to(ROOT)) for path in DOCS.rglob("*.md")}
    assert without <= pages, sorted(without - pages)
    having = {str(b.path.relative_to(ROOT)) for b in EXAMPLES}
    assert pages - without <= having, sorted(pages - without - having)


#: The line of docs/guides/asyncio.md that names what ``gocp.aio`` does not have yet.
_NOT_YET = re.compile(r"^\s*Not yet in `gocp\.aio`: (?P<names>.*)$", re.M)

#: The ways to make a pool, which the asyncio shell mirrors one by one.
_MAKERS = ("new", "pool", "keyed", "cluster")


def test_the_asyncio_guide_shows_what_gocp_aio_has_and_says_what_it_lacks() -> None:
    """As ``gocp.aio`` grows, its guide must grow with it: each way to make a pool that
    it has is used by a ```python example of the guide, and the guide's "Not yet in
    ``gocp.aio``" line names only what it lacks (so a new ``gocp.aio.keyed`` fails here
    until the guide shows it)."""
    import gocp.aio

    page = DOCS / "guides" / "asyncio.md"
    text = page.read_text()
    code = "".join(b.source for b in EXAMPLES if b.path == page)
    line = _NOT_YET.search(text)
    lacking = set() if line is None else set(re.findall(r"`gocp\.aio\.(\w+)`", line["names"]))
    for name in _MAKERS:
        has = hasattr(gocp.aio, name)
        if has:
            assert f"gocp.aio.{name}(" in code, f"gocp.aio.{name} exists: show it in {page}"
            assert name not in lacking, f"{page} says gocp.aio.{name} is not there yet"
        else:
            assert name in lacking, f"{page} must say gocp.aio.{name} is not there yet"


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_fence_names_a_known_language(path: Path) -> None:
    """```pyhton or ```Python3 would silently keep an example from running."""
    unknown = [f"{b.where} {b.language!r}" for b in blocks(path) if b.language not in LANGUAGES]
    assert not unknown, f"unknown fence languages (python runs, py is a sketch): {unknown}"


def test_the_collector_finds_indented_blocks_and_skips_fences_quoted_in_other_blocks(
    tmp_path: Path,
) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n"
        "```python\nx = 1\n```\n\n"
        '=== "Tab"\n\n    ```python\n    y = 2\n    if y:\n        y = 3\n    ```\n\n'
        "````text\n```python\nnot run\n```\n````\n\n"
        "```py\nsketch()\n```\n"
    )
    found = [(b.language, b.line, b.source) for b in blocks(page)]
    assert found == [
        ("python", 4, "x = 1\n"),
        ("python", 10, "y = 2\nif y:\n    y = 3\n"),
        ("text", 16, "```python\nnot run\n```\n"),
        ("py", 22, "sketch()\n"),
    ]
