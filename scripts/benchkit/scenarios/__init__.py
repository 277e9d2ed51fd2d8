"""The scenarios, one module each; each module's ``run(cfg)`` returns its tables."""

from __future__ import annotations

from collections.abc import Callable

from ..results import Settings, Table
from . import (
    aio,
    contended,
    import_time,
    kinds,
    lifecycle,
    memory,
    roundtrip,
    size,
    tls,
    uncontended,
)

#: Every scenario by its ``--only`` name, in the order a run takes them.
RUNNERS: dict[str, Callable[[Settings], list[Table]]] = {
    "uncontended": uncontended.run,
    "contended": contended.run,
    "roundtrip": roundtrip.run,
    "lifecycle": lifecycle.run,
    "size": size.run,
    "memory": memory.run,
    "import": import_time.run,
    "kinds": kinds.run,
    "tls": tls.run,
    "aio": aio.run,
}
SCENARIOS = tuple(RUNNERS)
