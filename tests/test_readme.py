"""The README's examples run as written: every ```python block (```py marks a sketch)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_first_example_sits_near_the_top_and_prints_stats(capsys):
    text = README.read_text()
    assert text.index(BLOCKS[0]) < 1500, "the first example must sit near the top"
    exec(compile(BLOCKS[0], str(README), "exec"), {})
    assert "PoolStats(" in capsys.readouterr().out


@pytest.mark.parametrize("number", range(1, len(BLOCKS)))
def test_every_other_example_runs(number):
    exec(compile(BLOCKS[number], str(README), "exec"), {})
