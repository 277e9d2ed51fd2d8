"""The issues' targets (2, 4 and the restructure's), checked against one run's tables.

Each target is a ratio of gocp's row to another row of the same table (the floor, the
best peer, or a named row), from the medians; "by min" gives the same ratio from the
fastest samples. A report, not an assertion.
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
    tables: dict[str, Table], key: str, to: str, *, by_min: bool = False, name: str = "gocp"
) -> float | None:
    """Row ``name``'s median over the floor's, the best peer's or row ``to``'s (``by_min``:
    fastest sample over fastest sample, which shrugs off load from other processes better)."""
    table = tables.get(key)
    if table is None:
        return None
    row = table.row(name)
    other = _other(table, to)
    if row is None or other is None or not row.samples or not other.samples:
        return None
    if by_min:
        pick = max if table.higher_is_better else min
        return pick(row.samples) / pick(other.samples)
    return table.ratio(row, other)


def _noisy(tables: dict[str, Table], key: str, to: str | None = None, name: str = "gocp") -> bool:
    """Whether row ``name``, or the row it is compared with, is noisy."""
    table = tables.get(key)
    if table is None:
        return False
    rows = [table.row(name), _other(table, to) if to else None]
    return any(row is not None and row.noisy for row in rows)


def _inverse(value: float | None) -> float | None:
    return 1.0 / value if value else None


def targets(tables: dict[str, Table]) -> list[Target]:
    def vs(
        source: str,
        text: str,
        key: str,
        to: str,
        limit: float,
        *,
        more: bool = False,
        name: str = "gocp",
    ) -> Target:
        """Row ``name``'s median over the floor's, the best peer's or row ``to``'s
        (``more``: the inverse, >= limit)."""
        ratio = _vs(tables, key, to, name=name)
        fastest = _vs(tables, key, to, by_min=True, name=name)
        return Target(
            source,
            text,
            _inverse(ratio) if more else ratio,
            limit,
            at_most=not more,
            noisy=_noisy(tables, key, to, name),
            by_min=_inverse(fastest) if more else fastest,
            key=key,
            name=name,
            to=to,
        )

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
        fcfs_text = "16 threads / 4 members: first come, first served" + where
        row = tables[key].row("gocp")
        if row is not None and "fcfs" in row.extra:
            fcfs = row.extra["fcfs"]
            detail = (
                f"fcfs={fcfs}; worst wait {row.extra.get('worst_ms', math.nan):.2f} ms, "
                f"p99 {row.extra.get('p99_us', math.nan):.1f} us, "
                f"jain {row.extra.get('jain', math.nan):.3f}"
            )
            value = 0.0 if fcfs == "yes" else 1.0
            out.append(
                Target("#4", fcfs_text, value, 0.0, unit="", boolean=True, detail=detail, key=key)
            )
        else:
            out.append(Target("#4", fcfs_text, None, 0.0, boolean=True, key=key))
    for placement in PLACEMENTS:
        for threads in (1, 8):
            key = placed_key(f"roundtrip_{threads}", placement)
            if key not in tables:
                continue
            text = (
                f"echo round trip, {threads} thread{'s' if threads > 1 else ''}, vs raw "
                f"[{placement}]"
            )
            out.append(vs("#2 (c)", text, key, "floor", 1.10))
            out.append(vs("#4", text, key, "floor", 1.05))
    size = tables.get("size")
    size_row = size.row("gocp") if size else None
    out.append(
        Target(
            "#4",
            "pool of 1,000 vs pool of 8",
            _median(tables, "size", "gocp"),
            1.1,
            noisy=bool(size_row and size_row.noisy),
            key="size",
        )
    )
    memory = tables.get("memory")
    gocp_row = memory.row("gocp") if memory else None
    over = gocp_row.extra.get("over") if gocp_row else None
    out.append(Target("#4", "memory per idle member over the socket", over, 2048, unit=" B"))
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
                    text = (
                        f"echo round trip, {threads} thread{'s' if threads > 1 else ''}, "
                        f"gocp vs gocp before [{placement}]"
                    )
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
        for tasks in (1, 64):
            key = f"aio_roundtrip_{tasks}_{loop}"
            if key in tables:
                text = f"aio echo round trip, {tasks} task(s), vs faster raw form [{loop}]"
                name = f"gocp.aio.new, {tasks} members"
                out.append(vs("#11", text, key, "floor", 1.10, name=name))
    return out


def print_targets(found: list[Target], tables: dict[str, Table]) -> None:
    print(
        f"\n== targets (issues 2 and 4; {RESTRUCTURE}: the restructure): a report, not an assertion"
    )
    print(f"   {'issue':<10}{'target':<64}{'gocp':>10}{'limit':>10}{'by min':>9}  result")
    for target in found:
        sign = "<=" if target.at_most else ">="
        value = "-" if target.value is None else f"{target.value:.2f}{target.unit}"
        if target.boolean:
            value = "-" if target.value is None else ("yes" if target.value == 0 else "no")
            limit = "yes"
        else:
            limit = f"{sign}{target.limit:g}{target.unit}"
        by_min = "" if target.by_min is None else f"{target.by_min:.2f}{target.unit}"
        print(
            f"   {target.source:<10}{target.text:<64}{value:>10}{limit:>10}{by_min:>9}"
            f"  {target.result}"
        )
        if target.detail:
            print(f"   {'':<10}  {target.detail}")

    def info(text: str, key: str, to: str, name: str = "gocp") -> None:
        """A ratio with no target: row ``name`` over row ``to`` of table ``key``, if both are."""
        table = tables.get(key)
        if table is None or table.row(name) is None or table.row(to) is None:
            return
        ratio = _vs(tables, key, to, name=name)
        fastest = _vs(tables, key, to, by_min=True, name=name)
        print(
            f"   {'info':<10}{text:<64}{fmt(ratio):>9}x{'-':>10}{fmt(fastest):>8}x  reported"
            + ("  (noisy)" if _noisy(tables, key, to, name) else "")
        )

    info(
        "uncontended get+put: gocp.pool (clients) vs psycopg_pool",
        "uncontended",
        PSYCOPG_NAME,
        CLIENTS_NAME,
    )
    for placement in PLACEMENTS:
        key = placed_key("contended", placement)
        info(f"16 threads / 4 members vs the fair floor [{placement}]", key, FAIR_FLOOR_NAME)
        info(f"16 threads / 4 members: gocp vs gocp before [{placement}]", key, BEFORE_NAME)
    print(
        "   result: from medians; 'by min': the same ratio from each row's fastest sample "
        "(less sensitive to other load, for comparison only)"
    )
    if any(target.noisy for target in found):
        print(
            f"   (noisy): gocp's row or the one it is compared with spread beyond {NOISY:g}x "
            "between samples; rerun on a quiet machine before trusting it"
        )
