"""Prometheus metrics for gocp pools (the extra ``gocp[prometheus]``: ``prometheus_client``).

For example:

```python
from prometheus_client import REGISTRY
import gocp.prometheus

REGISTRY.register(gocp.prometheus.collector(pool, other_pool, keyed_pool, cluster))
```

Every number of ``pool.stats()`` becomes a ``gocp_*`` metric labelled ``pool`` (the pool's
``name=``) and ``address`` (the server; ``""`` for a pool of clients), read when Prometheus
scrapes (nothing is counted twice, nothing runs between scrapes):

- gauges ``gocp_size``, ``gocp_idle``, ``gocp_in_use``, ``gocp_waiting``,
  ``gocp_connected``, ``gocp_overflow``, ``gocp_pool_closed`` (1 once closed);
- counters ``gocp_lends_total``, ``gocp_waits_total``, ``gocp_timeouts_total``,
  ``gocp_wait_seconds_total``, ``gocp_dials_total``, ``gocp_dial_failures_total``,
  ``gocp_broken_total``, ``gocp_stale_total``, ``gocp_leaks_total``,
  ``gocp_hook_failures_total``, and ``gocp_closed_connections_total`` with a ``reason``
  label (``idle``, ``lifetime``, ``check``, ``broken``, ``overflow``, ``fresh``).

A keyed pool gives one series per key (``address`` is the key) and a cluster one per server,
both under the keyed pool's or cluster's ``name``; their own numbers are exported too (see
``KIND_GAUGES``, ``KIND_COUNTERS``, ``SERVER_GAUGES``). Per-member stats are not exported
(a label per member would multiply the series by the pool's size).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError as _missing:  # pragma: no cover - the extra is not installed
    raise ImportError(
        "gocp.prometheus needs prometheus_client: pip install 'gocp[prometheus]'"
    ) from _missing

from ._stats import PoolStats

__all__ = [
    "CLOSED_REASONS",
    "COUNTERS",
    "GAUGES",
    "KIND_COUNTERS",
    "KIND_GAUGES",
    "SERVER_GAUGES",
    "Collector",
    "collector",
    "pool_stats",
]

Spec = tuple[str, str, str]
"""``(metric name, stats field, help)``; a counter's name gets ``_total`` when exposed."""

#: Gauges of each pool (of each key, of each server), labelled ``pool`` and ``address``.
GAUGES: tuple[Spec, ...] = (
    ("gocp_size", "size", "Members of the pool (constant for its life)."),
    ("gocp_idle", "idle", "Members idle in the pool."),
    ("gocp_in_use", "in_use", "Members lent now, overflow connections included."),
    ("gocp_waiting", "waiting", "Callers queued in get()."),
    ("gocp_connected", "connected", "Members holding a live connection."),
    ("gocp_overflow", "overflow", "Overflow connections open now (max_overflow)."),
    ("gocp_pool_closed", "closed", "1 once the pool was closed, else 0."),
)

#: Counters of each pool, labelled ``pool`` and ``address``.
COUNTERS: tuple[Spec, ...] = (
    ("gocp_lends", "lends", "Members lent by get()."),
    ("gocp_waits", "waits", "get() calls that had to queue."),
    ("gocp_timeouts", "timeouts", "get() calls that raised PoolTimeout."),
    ("gocp_wait_seconds", "wait_time", "Seconds callers spent queued in get()."),
    ("gocp_dials", "dials", "Connection attempts."),
    ("gocp_dial_failures", "dial_failures", "Connection attempts that failed."),
    ("gocp_broken", "broken", "Connections that failed during I/O or were put back broken."),
    ("gocp_stale", "stale", "Idle connections found closed by the peer and replaced unused."),
    ("gocp_leaks", "leaks", "Lends held past leak_timeout."),
    ("gocp_hook_failures", "hook_failures", "Check and close hooks that raised."),
)

#: ``gocp_closed_connections_total{reason=...}``: the ``closed_<reason>`` fields.
CLOSED_REASONS = ("idle", "lifetime", "check", "broken", "overflow", "fresh")

#: Numbers of a keyed pool or a cluster itself (labelled ``pool`` only), read from its
#: ``stats()`` when it has the field. A new kind of pool with numbers of its own adds
#: them here (gauges of ``len()`` for mappings).
KIND_GAUGES: tuple[Spec, ...] = (
    ("gocp_keys", "keys", "Keys of a keyed pool open now."),
    ("gocp_servers", "servers", "Servers of a cluster (removed ones still lending included)."),
)
KIND_COUNTERS: tuple[Spec, ...] = (
    ("gocp_keys_made", "keys_made", "Keys a keyed pool opened."),
    ("gocp_keys_evicted", "keys_evicted", "Keys closed to make room under max_keys."),
    ("gocp_keys_expired", "keys_expired", "Keys closed after key_idle_timeout."),
)

#: Numbers of each server of a cluster (``ServerStats``), labelled ``pool`` and ``address``.
SERVER_GAUGES: tuple[Spec, ...] = (
    ("gocp_server_up", "state", "1 while the server is in the rotation, 0 while it is not."),
    ("gocp_server_weight", "weight", "The server's weight in the round robin."),
    ("gocp_server_retry_in_seconds", "retry_in", "Seconds until a get may try the server."),
    ("gocp_server_tokens", "tokens", "Tokens in the server's bucket (max_rps)."),
)

_LABELS = ("pool", "address")

Part = tuple[str, str, PoolStats, Any]
"""``(pool label, address label, PoolStats, the part's own stats or None)``."""


def pool_stats(stats: object) -> Iterator[Part]:
    """The ``PoolStats`` in one ``stats()`` snapshot, one per server address, labelled.

    The extension point for kinds of pool: a ``PoolStats`` is one part; a snapshot with
    a mapping ``keys`` (``KeyedStats``) or ``servers`` (``ClusterStats``) gives one part
    per entry, labelled with the snapshot's ``name`` and the entry's key, its
    ``PoolStats`` being the entry itself or its ``pool`` (``ServerStats``). Raises
    ``TypeError`` for anything else.
    """
    if isinstance(stats, PoolStats):
        yield stats.name, stats.address or "", stats, None
        return
    name = getattr(stats, "name", None)
    for field in ("keys", "servers"):
        entries = getattr(stats, field, None)
        if isinstance(entries, Mapping) and isinstance(name, str):
            for key, entry in entries.items():
                part = entry if isinstance(entry, PoolStats) else getattr(entry, "pool", None)
                if not isinstance(part, PoolStats):
                    raise TypeError(
                        f"{type(stats).__name__}.{field}[{key!r}] holds no gocp.PoolStats: "
                        f"{type(entry).__name__}"
                    )
                yield name, str(key), part, None if entry is part else entry
            return
    raise TypeError(
        f"stats() returned {type(stats).__name__}, which holds no gocp.PoolStats (expected a "
        "PoolStats, or a snapshot with a keys or servers mapping of them)"
    )


def _reference(pool: object) -> Callable[[], object]:
    try:
        return weakref.ref(pool)
    except TypeError:  # not weakly referenceable: held for as long as the collector is
        return lambda: pool


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        return float(len(value))
    if isinstance(value, str):  # a server's state
        return 1.0 if value == "up" else 0.0
    return None  # not there (None): no sample


class Collector:
    """A ``prometheus_client`` collector of gocp pools; see the module docstring.

    It holds the pools weakly, so exporting a pool never keeps it alive (a pool dropped
    without ``close()`` is still collected and closed): keep a reference to what you
    export, as you do to a pool you use. A pool that is collected drops out of the
    metrics; a closed one stays (``gocp_pool_closed`` 1, its counters final) until
    ``remove``. ``add`` and ``remove`` are safe from any thread, also during a scrape.
    """

    __module__ = "gocp.prometheus"

    def __init__(self, pools: Iterable[object] = ()) -> None:
        self._lock = threading.Lock()
        self._pools: tuple[Callable[[], object], ...] = ()  # references to the pools
        self.add(*pools)

    def add(self, *pools: object) -> None:
        """Export ``pools`` too: anything whose ``stats()`` gives a ``PoolStats``, a
        ``KeyedStats`` or a ``ClusterStats``. Raises ``TypeError`` for anything else and
        ``ValueError`` for a pool already exported, or one whose labels (``name`` and
        address) another pool has: give them different ``name=``s."""
        checked: list[Callable[[], object]] = []
        labels: dict[tuple[str, str], object] = {}
        with self._lock:
            current = self._pools
        for pool in (*[ref() for ref in current], *pools):
            if pool is None:
                continue
            stats = getattr(pool, "stats", None)
            if not callable(stats):
                raise TypeError(
                    "pools: expected gocp pools (objects with a stats() method), got "
                    f"{type(pool).__name__} {pool!r}"
                )
            for name, address, _, _ in pool_stats(stats()):
                other = labels.setdefault((name, address), pool)
                if other is not pool:
                    raise ValueError(
                        f"pools: {pool!r} and {other!r} have the same labels pool={name!r}, "
                        f"address={address!r}: give them different name= options"
                    )
        for pool in pools:
            if any(ref() is pool for ref in (*current, *checked)):
                raise ValueError(f"pools: {pool!r} is exported already")
            checked.append(_reference(pool))
        with self._lock:
            self._pools = (*self._pools, *checked)

    def remove(self, pool: object) -> None:
        """Stop exporting ``pool``; ``ValueError`` if it is not exported."""
        with self._lock:
            kept = tuple(ref for ref in self._pools if ref() is not pool)
            if len(kept) == len(self._pools):
                raise ValueError(f"pool: {pool!r} is not exported by this collector")
            self._pools = kept

    def describe(self) -> list[Metric]:
        """The metric families, without samples (for the registry's name check)."""
        return list(self._families().values())

    def collect(self) -> list[Metric]:
        """One sample per pool (key, server) and stat, from each pool's ``stats()`` now."""
        families = self._families()
        seen: set[tuple[str, str]] = set()
        for ref in self._pools:
            pool = ref()
            if pool is None:
                continue
            stats = pool.stats()  # type: ignore[attr-defined]
            for metric, field, _ in (*KIND_GAUGES, *KIND_COUNTERS):
                value = _number(getattr(stats, field, None))
                if value is not None and not isinstance(stats, PoolStats):
                    families[metric].add_metric([stats.name], value)
            for name, address, part, entry in pool_stats(stats):
                if (name, address) in seen:  # a key made since add() took another's labels
                    continue
                seen.add((name, address))
                labels = [name, address]
                for metric, field, _ in (*GAUGES, *COUNTERS):
                    families[metric].add_metric(labels, float(getattr(part, field)))
                for reason in CLOSED_REASONS:
                    families["gocp_closed_connections"].add_metric(
                        [*labels, reason], float(getattr(part, f"closed_{reason}"))
                    )
                for metric, field, _ in SERVER_GAUGES:
                    value = _number(getattr(entry, field, None))
                    if value is not None:
                        families[metric].add_metric(labels, value)
        return list(families.values())

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily | CounterMetricFamily]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for metric, _, text in (*GAUGES, *SERVER_GAUGES):
            families[metric] = GaugeMetricFamily(metric, text, labels=_LABELS)
        for metric, _, text in COUNTERS:
            families[metric] = CounterMetricFamily(metric, text, labels=_LABELS)
        families["gocp_closed_connections"] = CounterMetricFamily(
            "gocp_closed_connections",
            "Connections closed by the pool, by reason.",
            labels=(*_LABELS, "reason"),
        )
        for metric, _, text in KIND_GAUGES:
            families[metric] = GaugeMetricFamily(metric, text, labels=("pool",))
        for metric, _, text in KIND_COUNTERS:
            families[metric] = CounterMetricFamily(metric, text, labels=("pool",))
        return families

    def __repr__(self) -> str:
        live = sum(1 for ref in self._pools if ref() is not None)
        return f"<gocp.prometheus.Collector pools={live}>"


def collector(*pools: object) -> Collector:
    """A collector exporting ``pools`` (gocp pools, keyed pools, clusters); register it
    with ``prometheus_client.REGISTRY.register`` (or your own registry). More pools can
    be added later with ``add``. See the module docstring for the metrics."""
    return Collector(pools)


collector.__module__ = "gocp.prometheus"
