"""The issues' targets (2, 4, 10, 11, 13 and the restructure's), checked against one run's tables.

Each target is a ratio of gocp's row to another row of the same table (the floor, the
best peer, or a named row), from the medians; "by min" and "by max" give the same ratio
from the fastest and from the slowest samples. A report, not an assertion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .peers import PSYCOPG_NAME
from .placement import PLACEMENTS, placed_key
from .results import NOISY, Row, Table, fmt
from .scenarios.lifecycle import GOCP_KINDS, GOCP_LIFECYCLE, GOCP_PLAIN
from .subjects import BEFORE_NAME, CLIENTS_NAME, FAIR_FLOOR_NAME, baseline


@dataclass
class Target:
    source: str
    text: str
    value: float | None
    limit: float
    at_most: bool = True
    unit: str = "x"
    detail: str = ""
    boolean: bool = False  # value 0.0 means yes, 1.0 no
    noisy: bool = False  # a row behind the value spread beyond NOISY
    by_min: float | None = None  # the same ratio from the fastest samples, for comparison
    by_max: float | None = None  # and from the slowest samples
    # Where the target applies, for the chart: row ``name`` of table ``key``, against the
    # floor (``to="floor"``), the best peer (``"peer"``), the row of that name, or (``None``)
    # the row's own value.
    key: str | None = None
    name: str = "gocp"
    to: str | None = None

    @property
    def result(self) -> str:
        if self.value is None or math.isnan(self.value):
            return "n/a"
        ok = self.value <= self.limit if self.at_most else self.value >= self.limit
        return ("PASS" if ok else "FAIL") + (" (noisy)" if self.noisy else "")


#: The source column of the targets the restructure's issue set (gocp vs gocp before,
#: policies on vs off).
RESTRUCTURE = "restruct"


def _median(tables: dict[str, Table], key: str, name: str) -> float | None:
    table = tables.get(key)
    row = table.row(name) if table else None
    return row.median if row and row.samples else None


def _other(table: Table, to: str) -> Row | None:
    """The row compared with: ``"floor"``, ``"peer"`` (the best peer) or a row's name."""
    if to == "floor":
        return table.floor()
    return table.best_peer() if to == "peer" else table.row(to)


def _vs(
    tables: dict[str, Table], key: str, to: str, *, by: str = "median", name: str = "gocp"
) -> float | None:
    """Row ``name``'s median over the floor's, the best peer's or row ``to``'s (``by``
    "fastest": fastest sample over fastest sample, which shrugs off load from other
    processes better; "slowest": slowest over slowest)."""
    table = tables.get(key)
    if table is None:
        return None
    row = table.row(name)
    other = _other(table, to)
    if row is None or other is None or not row.samples or not other.samples:
        return None
    if by == "median":
        return table.ratio(row, other)
    pick = max if table.higher_is_better == (by == "fastest") else min
    return pick(row.samples) / pick(other.samples)


def _ratios(
    tables: dict[str, Table], key: str, to: str, name: str
) -> tuple[float | None, float | None, float | None]:
    """``_vs`` by the medians, the fastest and the slowest samples."""
    return (
        _vs(tables, key, to, name=name),
        _vs(tables, key, to, by="fastest", name=name),
        _vs(tables, key, to, by="slowest", name=name),
    )


def _noisy(tables: dict[str, Table], key: str, to: str | None = None, name: str = "gocp") -> bool:
    """Whether row ``name``, or the row it is compared with, is noisy."""
    table = tables.get(key)
    if table is None:
        return False
    rows = [table.row(name), _other(table, to) if to else None]
    return any(row is not None and row.noisy for row in rows)


def _inverse(value: float | None) -> float | None:
    return 1.0 / value if value else None


def _fcfs(source: str, table: Table, placement: str) -> Target:
    """Whether gocp's row of a contended ``table`` kept first come, first served."""
    text = f"16 threads / 4 members: first come, first served [{placement}]"
    row = table.row("gocp")
    if row is None or "fcfs" not in row.extra:
        return Target(source, text, None, 0.0, boolean=True, key=table.key)
    fcfs = row.extra["fcfs"]
    detail = (
        f"fcfs={fcfs}; worst wait {row.extra.get('worst_ms', math.nan):.2f} ms, "
        f"p99 {row.extra.get('p99_us', math.nan):.1f} us, "
        f"jain {row.extra.get('jain', math.nan):.3f}"
    )
    value = 0.0 if fcfs == "yes" else 1.0
    return Target(source, text, value, 0.0, unit="", boolean=True, detail=detail, key=table.key)


def _size(source: str, tables: dict[str, Table]) -> Target:
    """get+put on a pool of 1,000 over a pool of 8 (the size table's gocp row): <= 1.1x."""
    size = tables.get("size")
    row = size.row("gocp") if size else None
    return Target(
        source,
        "pool of 1,000 vs pool of 8",
        _median(tables, "size", "gocp"),
        1.1,
        noisy=bool(row and row.noisy),
        key="size",
    )


def _over(tables: dict[str, Table], name: str) -> float | None:
    """Row ``name``'s bytes per idle member over the raw socket, in the memory table."""
    memory = tables.get("memory")
    row = memory.row(name) if memory else None
    over = row.extra.get("over") if row else None
    return None if over is None else float(over)


@dataclass
class _Ratios:
    """The targets that are a ratio of two rows of one table of ``tables``."""

    tables: dict[str, Table]

    def vs(
        self,
        source: str,
        text: str,
        key: str,
        to: str,
        limit: float,
        *,
        more: bool = False,
        name: str = "gocp",
    ) -> Target:
        """Row ``name``'s median over the floor's, the best peer's or row ``to``'s, in table
        ``key``, at most ``limit`` (``more``: the inverse, at least ``limit``)."""
        ratio, fastest, slowest = (
            _inverse(r) if more else r for r in _ratios(self.tables, key, to, name)
        )
        return Target(
            source,
            text,
            ratio,
            limit,
            at_most=not more,
            noisy=_noisy(self.tables, key, to, name),
            by_min=fastest,
            by_max=slowest,
            key=key,
            name=name,
            to=to,
        )


def _roundtrip_text(threads: int, what: str, placement: str) -> str:
    return f"echo round trip, {threads} thread{'s' if threads > 1 else ''}, {what} [{placement}]"


#: The source column of issue 13's targets, "Performance, round two".
ROUND_TWO = "#13"
#: Issue 13's round-trip limits: 1 thread and 8 threads over raw sockets.
ROUND_TWO_RT = {1: 1.08, 8: 1.15}
#: Issue 13's bound on memory per idle member, gocp over gocp before: one 16-byte block
#: (pymalloc's unit) per member, chosen over +5% (about 20 B of gocp's ~400 B).
ROUND_TWO_MEMORY = 16.0


def _issue13(tables: dict[str, Table]) -> list[Target]:
    """Issue 13's targets, from the tables of this run that hold them (each placed table in
    every placement the run has)."""
    vs = _Ratios(tables).vs
    out = []
    if "uncontended" in tables:
        for name, what in (("gocp", ""), (CLIENTS_NAME, f", {CLIENTS_NAME}")):
            text = f"uncontended get+put{what} vs floor"
            out.append(vs(ROUND_TWO, text, "uncontended", "floor", 0.5, name=name))
            text = f"uncontended get+put{what} vs fastest peer"
            out.append(vs(ROUND_TWO, text, "uncontended", "peer", 0.25, name=name))
    for placement in PLACEMENTS:
        key = placed_key("contended", placement)
        if key in tables:
            out.append(_fcfs(ROUND_TWO, tables[key], placement))
            text = f"16 threads / 4 members vs the fair floor [{placement}]"
            out.append(vs(ROUND_TWO, text, key, FAIR_FLOOR_NAME, 1.2))
            text = f"16 threads / 4 members: throughput vs fastest peer [{placement}]"
            out.append(vs(ROUND_TWO, text, key, "peer", 1.0, more=True))
        for threads, limit in ROUND_TWO_RT.items():
            key = placed_key(f"roundtrip_{threads}", placement)
            if key in tables:
                text = _roundtrip_text(threads, "vs raw", placement)
                out.append(vs(ROUND_TWO, text, key, "floor", limit))
    if "size" in tables:
        out.append(_size(ROUND_TWO, tables))
    if "memory" in tables:
        text = "memory per idle member: gocp over gocp before"
        now, before = _over(tables, "gocp"), _over(tables, BEFORE_NAME)
        if baseline() is None:
            detail = "needs --baseline PATH, a directory holding the package gocp_before"
        else:
            detail = f"over the socket: gocp {fmt(now, '.0f')} B, before {fmt(before, '.0f')} B"
        grew = None if now is None or before is None else now - before
        out.append(Target(ROUND_TWO, text, grew, ROUND_TWO_MEMORY, unit=" B", detail=detail))
    return out


def targets(tables: dict[str, Table]) -> list[Target]:
    vs = _Ratios(tables).vs
    out = [
        vs("#2 (a)", "uncontended get+put vs floor", "uncontended", "floor", 2.0),
        vs("#4", "uncontended get+put vs floor", "uncontended", "floor", 1.5),
        vs("#4", "uncontended get+put vs fastest peer", "uncontended", "peer", 0.5),
    ]
    for placement in PLACEMENTS:
        key = placed_key("contended", placement)
        if key not in tables:
            continue
        where = f" [{placement}]"
        out.append(vs("#4", "16 threads / 4 members vs floor" + where, key, "floor", 3.0))
        text = "16 threads / 4 members: throughput vs fastest peer" + where
        out.append(vs("#4", text, key, "peer", 3.0, more=True))
        out.append(_fcfs("#4", tables[key], placement))
    for placement in PLACEMENTS:
        for threads in (1, 8):
            key = placed_key(f"roundtrip_{threads}", placement)
            if key not in tables:
                continue
            text = _roundtrip_text(threads, "vs raw", placement)
            out.append(vs("#2 (c)", text, key, "floor", 1.10))
            out.append(vs("#4", text, key, "floor", 1.05))
    out.append(_size("#4", tables))
    text = "memory per idle member over the socket"
    out.append(Target("#4", text, _over(tables, "gocp"), 2048, unit=" B"))
    out.append(
        Target(
            "#4",
            "import gocp adds",
            _median(tables, "import", "gocp"),
            50,
            unit=" ms",
            noisy=_noisy(tables, "import"),
        )
    )
    # the restructure: gocp against the package before it, and its policies on and off
    if baseline() is not None:
        if "uncontended" in tables:
            text = "uncontended get+put: gocp vs gocp before"
            out.append(vs(RESTRUCTURE, text, "uncontended", BEFORE_NAME, 1.05))
        for placement in PLACEMENTS:
            for threads in (1, 8):
                key = placed_key(f"roundtrip_{threads}", placement)
                if key in tables:
                    text = _roundtrip_text(threads, "gocp vs gocp before", placement)
                    out.append(vs(RESTRUCTURE, text, key, BEFORE_NAME, 1.05))
    elif "uncontended" in tables or any(k.startswith("roundtrip_") for k in tables):
        detail = "needs --baseline PATH, a directory holding the package gocp_before"
        text = "gocp within 1.05x of gocp before"
        out.append(Target(RESTRUCTURE, text, None, 1.05, detail=detail))
    if "lifecycle" in tables:
        for kind, pattern, _make in GOCP_KINDS:
            for label in GOCP_LIFECYCLE:
                text = f"get+put, policies on vs off, {kind}: {label}"
                plain = pattern.format(GOCP_PLAIN)
                name = pattern.format(label)
                out.append(vs(RESTRUCTURE, text, "lifecycle", plain, 1.10, name=name))
    # keyed pools and clusters (issue 10): their get+put over a single pool's
    for kind, keyed, cluster in (
        ("sockets", "gocp.keyed (one key)", "gocp.cluster (3 servers)"),
        ("clients", "gocp.keyed (clients, one key)", "gocp.cluster (clients, 3 servers)"),
    ):
        key = f"kinds_{kind}"
        if key in tables:
            text = f"keyed get+put vs a single pool ({kind})"
            out.append(vs("#10", text, key, "floor", 1.5, name=keyed))
            text = f"cluster get+put vs a single pool ({kind})"
            out.append(vs("#10", text, key, "floor", 1.5, name=cluster))
    # gocp.aio (issue 11), for each event loop
    for loop in ("asyncio", "uvloop"):
        key = f"aio_getput_{loop}"
        if key in tables:
            for name in ("gocp.aio.new (members not dialled)", "gocp.aio.pool (clients)"):
                short = name.split(" (")[0]
                text = f"{short} get+put vs asyncio.Queue [{loop}]"
                out.append(vs("#11", text, key, "floor", 1.5, name=name))
                text = f"{short} get+put vs psycopg_pool [{loop}]"
                out.append(vs("#11", text, key, "peer", 0.25, name=name))
        for placement in PLACEMENTS:
            for tasks in (1, 64):
                key = placed_key(f"aio_roundtrip_{tasks}_{loop}", placement)
                if key in tables:
                    text = f"aio echo round trip, {tasks} task(s), vs raw [{loop}, {placement}]"
                    name = f"gocp.aio.new, {tasks} members"
                    out.append(vs("#11", text, key, "floor", 1.10, name=name))
    out += _issue13(tables)
    return out


def print_targets(found: list[Target], tables: dict[str, Table]) -> None:
    print(
        f"\n== targets (issues 2, 4, 10, 11 and 13; {RESTRUCTURE}: the restructure): "
        "a report, not an assertion"
    )
    print(
        f"   {'issue':<10}{'target':<64}{'gocp':>10}{'limit':>10}{'by min':>9}{'by max':>9}  result"
    )
    for target in found:
        sign = "<=" if target.at_most else ">="
        value = "-" if target.value is None else f"{target.value:.2f}{target.unit}"
        if target.boolean:
            value = "-" if target.value is None else ("yes" if target.value == 0 else "no")
            limit = "yes"
        else:
            limit = f"{sign}{target.limit:g}{target.unit}"
        by_min, by_max = (
            "" if by is None else f"{by:.2f}{target.unit}" for by in (target.by_min, target.by_max)
        )
        print(
            f"   {target.source:<10}{target.text:<64}{value:>10}{limit:>10}{by_min:>9}{by_max:>9}"
            f"  {target.result}"
        )
        if target.detail:
            print(f"   {'':<10}  {target.detail}")

    def info(text: str, key: str, to: str, name: str = "gocp") -> None:
        """A ratio with no target: row ``name`` over row ``to`` of table ``key``, if both are."""
        table = tables.get(key)
        if table is None or table.row(name) is None or table.row(to) is None:
            return
        ratio, fastest, slowest = _ratios(tables, key, to, name)
        print(
            f"   {'info':<10}{text:<64}{fmt(ratio):>9}x{'-':>10}{fmt(fastest):>8}x"
            f"{fmt(slowest):>8}x  reported" + ("  (noisy)" if _noisy(tables, key, to, name) else "")
        )

    info(
        "uncontended get+put: gocp.pool (clients) vs psycopg_pool",
        "uncontended",
        PSYCOPG_NAME,
        CLIENTS_NAME,
    )
    for placement in PLACEMENTS:
        key = placed_key("contended", placement)
        info(f"16 threads / 4 members: gocp vs gocp before [{placement}]", key, BEFORE_NAME)
    print(
        "   result: from medians; 'by min' / 'by max': the same ratio from each row's fastest / "
        "slowest sample (by min is less sensitive to other load; both for comparison only)"
    )
    if any(target.noisy for target in found):
        print(
            f"   (noisy): gocp's row or the one it is compared with spread beyond {NOISY:g}x "
            "between samples; rerun on a quiet machine before trusting it"
        )
