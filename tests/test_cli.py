"""``python -m gocp``: help exits 0, bad usage exits 2 with a message, ``demo`` gets the rest.

Every run is a subprocess with a timeout; none of them runs the demo itself
(``tests/test_demo.py`` does).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

TIMEOUT = 30


def gocp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gocp", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def options(help_text: str) -> dict[str, str]:
    """``{"--seconds": "length of the run", ...}`` from lines like ``  --seconds N  length...``."""
    found = {}
    for line in help_text.splitlines():
        match = re.fullmatch(r"\s+(--[a-z-]+)(?: [A-Z_]+)?\s{2,}(\S.*)", line)
        if match and match[1] != "--help":
            found[match[1]] = match[2].strip()
    return found


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_shows_the_demo_and_its_options(flag):
    run = gocp(flag)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    out = run.stdout
    assert out.startswith(
        "usage: python -m gocp demo [--seconds N] [--workers N] [--size N] [--cluster]"
    )
    assert "commands:" in out
    assert re.search(r"^  demo\s+\S", out, re.MULTILINE)
    assert set(options(out)) == {"--seconds", "--workers", "--size", "--cluster"}


def test_help_lists_the_options_the_demo_really_has():
    """The top-level help repeats the demo's options: they must not drift apart."""
    ours, demos = gocp("--help"), gocp("demo", "--help")
    assert demos.returncode == 0, demos.stderr
    assert demos.stdout.startswith("usage: python -m gocp demo")
    assert options(ours.stdout) == options(demos.stdout)
    assert options(ours.stdout)  # the parsing above found something


def test_help_before_demo_is_ours_after_it_the_demos():
    assert gocp("-h", "demo").stdout == gocp("--help").stdout
    assert gocp("demo", "-h").stdout == gocp("demo", "--help").stdout


@pytest.mark.parametrize("command", ["deom", "help", "run", "Demo"])
def test_unknown_command_exits_2_naming_it(command):
    run = gocp(command)
    assert run.returncode == 2
    assert run.stdout == ""
    assert "usage: python -m gocp demo" in run.stderr
    assert f"invalid choice: {command!r}" in run.stderr
    assert "(choose from 'demo')" in run.stderr or "(choose from demo)" in run.stderr  # 3.13+


def test_no_command_exits_2_with_usage():
    run = gocp()
    assert run.returncode == 2
    assert run.stdout == ""
    assert "usage: python -m gocp demo" in run.stderr
    assert "COMMAND" in run.stderr


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--bogus", "demo"], "unrecognized arguments: --bogus"),
        (["--seconds", "1", "demo"], "invalid choice: '1'"),  # demo options go after demo
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),  # the demo's own check
        (["demo", "--seconds", "soon"], "--seconds"),
    ],
)
def test_bad_options_exit_2(args, complaint):
    run = gocp(*args)
    assert run.returncode == 2
    assert complaint in run.stderr


def test_help_and_import_do_not_load_the_demo():
    code = (
        "import sys\n"
        "import gocp\n"
        "assert 'gocp._demo' not in sys.modules, 'import gocp loaded the demo'\n"
        "from gocp.__main__ import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "assert 'gocp._demo' not in sys.modules, '--help loaded the demo'\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert run.returncode == 0, run.stderr
