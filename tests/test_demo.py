"""The main job: ``python -m gocp demo`` survives its faults and says it recovered."""

import subprocess
import sys

import pytest


@pytest.mark.timeout(60)
def test_demo_recovers_by_itself():
    run = subprocess.run(
        [sys.executable, "-m", "gocp", "demo", "--seconds", "5", "--workers", "4", "--size", "2"],
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "fault: server stops: outage begins" in out
    assert "fault: reset every connection" in out
    assert "recovered by itself: yes" in out
    assert "pool at the end  size=2 idle=2 in_use=0" in out
    # the failures the faults caused were reported, not hidden
    assert "gocp.dial_failed" in out
    # a reset lands on a request in flight (broken) or on an idle connection (stale)
    assert "gocp.connection_broken" in out or "gocp.stale_dropped" in out
    assert "gocp.reconnected" in out


def test_main_without_demo_prints_usage():
    run = subprocess.run(
        [sys.executable, "-m", "gocp"], capture_output=True, text=True, timeout=30, check=False
    )
    assert run.returncode == 2
    assert "usage: python -m gocp demo" in run.stderr


@pytest.mark.timeout(60)
def test_cluster_demo_moves_traffic_off_a_dead_server_and_back():
    run = subprocess.run(
        [sys.executable, "-m", "gocp", "demo", "--cluster", "--seconds", "6", "--workers", "4"],
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    assert "stops" in out
    assert "back" in out
    # while it was down it had no share and its state said so
    assert "  0% (down)" in out
    assert "recovered by itself: yes" in out
