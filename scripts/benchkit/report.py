"""The report: each table printed with its ratios, and the whole run as a JSON document."""

from __future__ import annotations

from typing import Any

from .results import NOISY, Table, fmt
from .targets import Target


def print_table(table: Table) -> None:
    floor, best = table.floor(), table.best_peer()
    print(f"\n== {table.title}")
    for note in table.notes:
        print(f"   {note}")
    head = f"   {'subject':<58}{'median':>9}{'min':>9}{'max':>9}"
    if table.ratios:
        head += f"{'x floor':>9}{'x best':>8}"
    for _key, name, _spec in table.columns:
        head += f"  {name}"
    print(head + f"   [{table.unit}]")
    for row in table.rows:
        label = row.name + (" *" if row.kind == "info" else "")
        if not row.samples:
            print(f"   {label:<58}{row.status or 'no data':>9}")
            continue
        line = f"   {label:<58}{fmt(row.median):>9}"
        line += f"{fmt(min(row.samples)):>9}{fmt(max(row.samples)):>9}"
        if table.ratios:
            line += f"{fmt(table.ratio(row, floor)):>9}{fmt(table.ratio(row, best)):>8}"
        for key, name, spec in table.columns:
            value = row.extra.get(key)
            text = (
                "-" if value is None else (value if isinstance(value, str) else f"{value:{spec}}")
            )
            line += f"  {text:>{len(name)}}"
        if row.note:
            line += f"   ({row.note})"
        if row.noisy:
            line += "  ~"
        print(line)
    if best is not None and table.ratios:
        print(f"   best peer: {best.name}")
    if any(r.kind == "info" for r in table.rows):
        print("   * for information: neither the floor nor a peer")
    if any(r.noisy for r in table.rows):
        print(f"   ~ noisy: max > {NOISY:g} x min; read its median with care")


def table_json(table: Table) -> dict[str, Any]:
    floor, best = table.floor(), table.best_peer()
    rows = []
    for row in table.rows:
        item: dict[str, Any] = {"name": row.name, "kind": row.kind, "status": row.status or "ok"}
        if row.samples:
            item.update(
                median=row.median,
                min=min(row.samples),
                max=max(row.samples),
                samples=row.samples,
                x_floor=table.ratio(row, floor) if table.ratios else None,
                x_best_peer=table.ratio(row, best) if table.ratios else None,
                noisy=row.noisy,
            )
        item.update(extra=row.extra, note=row.note)
        rows.append(item)
    return {
        "title": table.title,
        "unit": table.unit,
        "higher_is_better": table.higher_is_better,
        "notes": table.notes,
        "floor": floor.name if floor else None,
        "best_peer": best.name if best else None,
        "rows": rows,
    }


def target_json(target: Target) -> dict[str, Any]:
    return {
        "source": target.source,
        "target": target.text,
        "value": target.value,
        "limit": target.limit,
        "at_most": target.at_most,
        "unit": target.unit.strip(),
        "detail": target.detail,
        "noisy": target.noisy,
        "by_min": target.by_min,
        "by_max": target.by_max,
        "result": target.result,
    }


def document(meta: dict[str, Any], tables: dict[str, Table], found: list[Target]) -> dict[str, Any]:
    """The run as the JSON document ``--json`` writes."""
    return {
        "meta": meta,
        "scenarios": {key: table_json(table) for key, table in tables.items()},
        "targets": [target_json(target) for target in found],
    }
