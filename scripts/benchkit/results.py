"""The settings of a run, and its results: tables of rows, each row a list of samples."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

NOISY = 1.5  # max/min spread of a row's samples beyond which its figures are flagged


@dataclass(frozen=True)
class Settings:
    quick: bool
    repeats: int  # samples per subject for timing scenarios
    sample: float  # seconds per single-thread sample
    contended_seconds: float  # seconds per 16-thread sample
    fairness_runs: int  # timed-get runs for the worst wait
    rt_sample: float  # seconds per round-trip sample
    rt_repeats: int  # round-trip samples per subject (more, shorter: loopback is noisy)
    members: int  # the memory scenario's pool size
    import_runs: int
    server: str = "epoll"  # the echo server's kind, a key of echo.SERVERS
    placements: tuple[str, ...] = ("one-cpu", "split", "os")  # keys of placement.PLACEMENTS

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(True, 3, 0.01, 0.08, 1, 0.03, 3, 200, 3)
        return cls(False, 7, 0.05, 0.25, 2, 0.02, 25, 1000, 9)


@dataclass
class Row:
    name: str
    kind: str  # "floor", "gocp", "peer" or "info" (shown, never the floor or best peer)
    samples: list[float] = field(default_factory=list)
    status: str = ""  # empty when measured, else why not ("not installed", "n/a: ...")
    extra: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def noisy(self) -> bool:
        """Samples spread more than NOISY (max over min): the median may mislead."""
        return len(self.samples) > 1 and max(self.samples) > NOISY * min(self.samples)


@dataclass
class Table:
    key: str
    title: str
    unit: str
    higher_is_better: bool = False
    ratios: bool = True
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    columns: list[tuple[str, str, str]] = field(default_factory=list)  # (extra key, head, fmt)

    def row(self, name: str) -> Row | None:
        return next((r for r in self.rows if r.name == name), None)

    def floor(self) -> Row | None:
        return next((r for r in self.rows if r.kind == "floor" and r.samples), None)

    def best_peer(self) -> Row | None:
        peers = [r for r in self.rows if r.kind == "peer" and r.samples]
        if not peers:
            return None
        pick = max if self.higher_is_better else min
        return pick(peers, key=lambda r: r.median or 0.0)

    def ratio(self, row: Row, to: Row | None) -> float | None:
        if to is None or not row.samples or not to.median:
            return None
        return (row.median or 0.0) / to.median


def error_status(exc: BaseException) -> str:
    """A row's status when building or timing its subject raised ``exc``."""
    return f"error: {exc!r}"[:60]


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)
