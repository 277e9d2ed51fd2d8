"""The README's first example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_first_example_runs(capsys):
    text = README.read_text()
    first = re.search(r"```python\n(.*?)```", text, re.S)
    assert first is not None
    assert text.index(first.group(0)) < 1500, "the first example must sit near the top"
    exec(compile(first.group(1), str(README), "exec"), {})
    assert "PoolStats(" in capsys.readouterr().out


def test_fault_proxy_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(block for block in blocks if "FaultProxy(" in block)
    exec(compile(example, str(README), "exec"), {})
