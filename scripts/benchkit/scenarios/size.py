"""``size``: get+put cost on a pool of 1,000 over a pool of 8.

Every member created and cycled once before timing; the samples of the two sizes
are interleaved, and each row's samples are the per-sample ratios.
"""

from __future__ import annotations

from collections.abc import Callable

from ..peers import PEERS
from ..results import Row, Settings, Table, error_status
from ..subjects import FLOOR_NAME, Subject, close_all, floor_subject, gocp_subject
from ..timing import getput_loop, run_interleaved


def run(cfg: Settings) -> list[Table]:
    small, big = 8, 1000
    table = Table(
        "size",
        f"get+put cost on a pool of {big:,} over a pool of {small}, 1 thread",
        "ratio",
        ratios=False,
        notes=[
            f"every member created and cycled once before timing; {cfg.repeats} samples of each, "
            "interleaved; median/min/max of the per-sample ratio",
        ],
        columns=[("small_us", f"us @{small}", ".2f"), ("big_us", f"us @{big}", ".2f")],
    )
    pairs: list[tuple[Row, Subject, Subject]] = []

    def add(row: Row, make: Callable[[int], Subject]) -> None:
        table.rows.append(row)
        try:
            pairs.append((row, make(small), make(big)))
        except Exception as exc:
            row.status = error_status(exc)

    add(Row(FLOOR_NAME, "floor"), floor_subject)
    add(Row("gocp", "gocp"), gocp_subject)
    for peer in PEERS:
        why = peer.missing()
        if why:
            table.rows.append(Row(peer.name, "peer", status=why))
        else:
            add(Row(peer.name, "peer"), peer.dummy)
    sizes = {}
    small_rows, big_rows = [], []
    for row, s_small, s_big in pairs:
        for subject, count in ((s_small, small), (s_big, big)):
            held = [subject.get() for _ in range(count)]
            for item in held:
                subject.put(item)
        sizes[row.name] = (Row(row.name, "info"), Row(row.name, "info"))
        small_rows.append((sizes[row.name][0], s_small))
        big_rows.append((sizes[row.name][1], s_big))
    try:
        # interleave small and big of each subject, sample by sample
        every = [x for pair in zip(small_rows, big_rows, strict=True) for x in pair]
        run_interleaved(cfg, every, lambda s: getput_loop(s.get, s.put))
    finally:
        close_all(small_rows + big_rows)
    for row, _s, _b in pairs:
        at_small, at_big = sizes[row.name]
        if at_small.samples and at_big.samples:
            row.samples = [b / s for s, b in zip(at_small.samples, at_big.samples, strict=True)]
            row.extra["small_us"] = at_small.median
            row.extra["big_us"] = at_big.median
        else:
            row.status = at_small.status or at_big.status or "error"
    return [table]
