"""``gocp.prometheus.collector``: every stat of every pool as a ``gocp_*`` metric.

Scraped from a registry (``generate_latest``, parsed back with prometheus_client's own
parser) and over HTTP from ``prometheus_client.start_http_server`` on a loopback port.
"""

from __future__ import annotations

import gc
import threading
import urllib.request

import attrs
import pytest
from invariants import round_trip, unused_address
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

import gocp
import gocp.prometheus
from gocp.prometheus import CLOSED_REASONS, COUNTERS, GAUGES, collector

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """``{(sample name, sorted labels): value}`` from the text exposition format."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def exercise(pool: gocp.Pool) -> None:
    """Lends, a wait, a timeout and a broken connection on an echo pool of size 1."""
    with pool.connection() as conn:
        assert round_trip(conn) == b"ping"
    held = pool.get()
    with pytest.raises(gocp.PoolTimeout):
        pool.get(timeout=0.01)  # waits, then times out
    pool.put(held, broken=True)


# -- what is exported -----------------------------------------------------------------------


def test_every_pool_stat_is_a_metric():
    exported = {field for _, field, _ in (*GAUGES, *COUNTERS)}
    exported |= {f"closed_{reason}" for reason in CLOSED_REASONS}
    numbers = {f.name for f in attrs.fields(gocp.PoolStats)} - {"name", "address", "members"}
    assert exported == numbers
    names = [name for name, _, _ in (*GAUGES, *COUNTERS)]
    assert all(name.startswith("gocp_") for name in names)
    assert len(set(names)) == len(names)


def test_a_registry_scrape_shows_each_pool_by_name_and_address(echo_server, registry):
    dead = unused_address()
    with (
        gocp.new(echo_server.address, size=1, name="cache") as cache,
        gocp.new(dead, size=2, name="sessions", retry_min=5, retry_max=5) as sessions,
        gocp.pool(object, size=3, name="clients") as clients,
    ):
        registry.register(collector(cache, sessions))
        exercise(cache)
        with sessions.connection() as conn, pytest.raises(gocp.DialError):
            conn.sendall(b"x")
        client = clients.get()
        samples = scrape(registry)
        here = {"pool": "cache", "address": echo_server.address_text}
        there = {"pool": "sessions", "address": f"127.0.0.1:{dead[1]}"}
        stats = cache.stats()
        for metric, field, _ in GAUGES:
            assert value(samples, metric, **here) == float(getattr(stats, field)), metric
        for metric, field, _ in COUNTERS:
            assert value(samples, f"{metric}_total", **here) == getattr(stats, field), metric
        assert value(samples, "gocp_lends_total", **here) == 2
        assert value(samples, "gocp_waits_total", **here) == 1
        assert value(samples, "gocp_timeouts_total", **here) == 1
        assert value(samples, "gocp_wait_seconds_total", **here) >= 0.01
        assert value(samples, "gocp_broken_total", **here) == 1
        assert value(samples, "gocp_connected", **here) == 0
        assert value(samples, "gocp_size", **there) == 2
        assert value(samples, "gocp_dials_total", **there) == 1
        assert value(samples, "gocp_dial_failures_total", **there) == 1
        assert value(samples, "gocp_closed_connections_total", reason="broken", **here) == 1
        assert value(samples, "gocp_closed_connections_total", reason="idle", **here) == 0
        # A pool added later (any pool kind: here a pool of clients, address "").
        registry_collector = collector()
        other = CollectorRegistry()
        other.register(registry_collector)
        registry_collector.add(clients)
        samples = scrape(other)
        assert value(samples, "gocp_in_use", pool="clients", address="") == 1
        assert value(samples, "gocp_size", pool="clients", address="") == 3
        clients.put(client)
    samples = scrape(registry)  # closed pools stay, marked
    assert value(samples, "gocp_pool_closed", **here) == 1
    assert value(samples, "gocp_lends_total", **here) == 2


def test_metadata_types_and_help(echo_server, registry):
    with gocp.new(echo_server.address, size=1, name="m") as pool:
        registry.register(collector(pool))
        families = {
            f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
        }
    assert families["gocp_idle"].type == "gauge"
    assert families["gocp_lends"].type == "counter"
    assert families["gocp_closed_connections"].type == "counter"
    assert families["gocp_wait_seconds"].documentation


def test_an_http_scrape_on_loopback(echo_server, registry):
    with gocp.new(echo_server.address, size=2, name="web") as pool:
        registry.register(collector(pool))
        with pool.connection() as conn:
            assert round_trip(conn) == b"ping"
        server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        try:
            port = server.server_address[1]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                assert reply.status == 200
                assert reply.headers["Content-Type"].startswith("text/plain")
                samples = parse(reply.read().decode())
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
    labels = {"pool": "web", "address": echo_server.address_text}
    assert value(samples, "gocp_lends_total", **labels) == 1
    assert value(samples, "gocp_dials_total", **labels) == 1
    assert value(samples, "gocp_connected", **labels) == 1
    assert value(samples, "gocp_size", **labels) == 2


# -- keyed pools and clusters ----------------------------------------------------------------


def test_a_keyed_pool_has_a_series_per_key(registry):
    def dial(key: str) -> object:
        return object()

    with gocp.keyed(size=2, dial=dial, name="tenants") as pools:
        registry.register(collector(pools))
        for key in ("a", "b"):
            with pools.connection(key):
                pass
        samples = scrape(registry)
    for key in ("a", "b"):
        assert value(samples, "gocp_lends_total", pool="tenants", address=key) == 1
        assert value(samples, "gocp_size", pool="tenants", address=key) == 2
    assert value(samples, "gocp_keys", pool="tenants") == 2
    assert value(samples, "gocp_keys_made_total", pool="tenants") == 2


def test_a_cluster_has_a_series_per_server(registry):
    def dial(address: str) -> object:
        return object()

    with gocp.cluster(["h1:1", "h2:2"], size=1, dial=dial, name="ring") as ring:
        registry.register(collector(ring))
        for _ in range(4):
            with ring.connection():
                pass
        samples = scrape(registry)
    for address in ("h1:1", "h2:2"):
        assert value(samples, "gocp_lends_total", pool="ring", address=address) == 2
        assert value(samples, "gocp_server_up", pool="ring", address=address) == 1
        assert value(samples, "gocp_server_weight", pool="ring", address=address) == 1
    assert value(samples, "gocp_servers", pool="ring") == 2


@attrs.frozen
class KindStats:
    """A pool kind the collector has never heard of, shaped like KeyedStats."""

    name: str
    keys: dict[str, gocp.PoolStats]


class KindPool:
    def __init__(self, parts: dict[str, gocp.Pool]) -> None:
        self.parts = parts

    def stats(self) -> KindStats:
        return KindStats("kind", {key: pool.stats() for key, pool in self.parts.items()})


def test_any_object_whose_stats_hold_pool_stats(registry):
    with gocp.pool(object, size=1) as a, gocp.pool(object, size=4) as b:
        kind = KindPool({"x": a, "y": b})  # held here: the collector holds it weakly
        registry.register(collector(kind))
        samples = scrape(registry)
    assert value(samples, "gocp_size", pool="kind", address="x") == 1
    assert value(samples, "gocp_size", pool="kind", address="y") == 4


# -- the collector's own contract --------------------------------------------------------------


@pytest.mark.parametrize("bad", [3, "pool", object()])
def test_something_without_stats_is_a_type_error(bad):
    with pytest.raises(TypeError, match=r"^pools: expected gocp pools"):
        collector(bad)


def test_stats_that_hold_no_pool_stats_are_a_type_error():
    class Odd:
        def stats(self) -> int:
            return 3

    with pytest.raises(TypeError, match=r"holds no gocp\.PoolStats"):
        collector(Odd())


def test_a_pool_twice_or_two_pools_with_the_same_labels_are_value_errors():
    with gocp.pool(object, name="same") as a, gocp.pool(object, name="same") as b:
        with pytest.raises(ValueError, match="exported already"):
            collector(a, a)
        with pytest.raises(ValueError, match="different name="):
            collector(a, b)
        exported = collector(a)
        with pytest.raises(ValueError, match="different name="):
            exported.add(b)


def test_two_collectors_in_one_registry_clash_by_name(registry):
    with gocp.pool(object, name="a") as a, gocp.pool(object, name="b") as b:
        registry.register(collector(a))
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            registry.register(collector(b))


def test_remove_and_a_collected_pool_leave_the_metrics(registry):
    kept = gocp.pool(object, name="kept")
    gone = gocp.pool(object, name="gone")
    dropped = gocp.pool(object, name="dropped")
    exported = collector(kept, gone, dropped)
    registry.register(exported)
    samples = scrape(registry)
    assert {labels for name, labels in samples if name == "gocp_size"} == {
        (("address", ""), ("pool", name)) for name in ("kept", "gone", "dropped")
    }
    exported.remove(gone)
    with pytest.raises(ValueError, match="not exported"):
        exported.remove(gone)
    del dropped  # dropped without close(): collected, and gone from the metrics
    gc.collect()
    samples = scrape(registry)
    assert {labels for name, labels in samples if name == "gocp_size"} == {
        (("address", ""), ("pool", "kept"))
    }
    assert repr(exported) == "<gocp.prometheus.Collector pools=1>"
    kept.close()
    gone.close()


def test_scrapes_while_pools_are_added_and_used(echo_server, registry):
    exported = collector()
    registry.register(exported)
    stop = threading.Event()
    errors: list[BaseException] = []

    def scraper() -> None:
        try:
            while not stop.is_set():
                scrape(registry)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=scraper)
    thread.start()
    pools = [gocp.new(echo_server.address, size=1, name=f"p{i}") for i in range(5)]
    try:
        for pool in pools:
            exported.add(pool)
            with pool.connection() as conn:
                assert round_trip(conn) == b"ping"
    finally:
        stop.set()
        thread.join(10)
        for pool in pools:
            pool.close()
    assert not errors
    samples = scrape(registry)
    assert all(
        value(samples, "gocp_lends_total", pool=f"p{i}", address=echo_server.address_text) == 1
        for i in range(5)
    )


def test_an_object_that_cannot_be_weakly_referenced_is_held(registry):
    class Slotted:
        __slots__ = ("pool",)

        def __init__(self, pool: gocp.Pool) -> None:
            self.pool = pool

        def stats(self) -> gocp.PoolStats:
            return self.pool.stats()

    with gocp.pool(object, size=2, name="slotted") as pool:
        registry.register(collector(Slotted(pool)))  # no reference kept here
        gc.collect()
        assert value(scrape(registry), "gocp_size", pool="slotted", address="") == 2


def test_a_mapping_entry_without_pool_stats_is_a_type_error():
    @attrs.frozen
    class Broken:
        name: str
        servers: dict[str, int]

    class Source:
        def stats(self) -> Broken:
            return Broken("b", {"h:1": 3})

    with pytest.raises(TypeError, match=r"Broken\.servers\['h:1'\] holds no gocp\.PoolStats"):
        collector(Source())


def test_asyncio_pools_keyed_pools_and_clusters_are_exported(registry):
    """gocp.aio's pools have the same stats, so the same metrics, labelled the same way."""
    import asyncio

    import gocp.aio

    async def scenario() -> Samples:
        pool = gocp.aio.pool(object, size=2, name="aio-pool")
        keyed = gocp.aio.keyed(dial=lambda key: object(), size=1, name="aio-keyed")
        cluster = gocp.aio.cluster(["x", "y"], dial=lambda address: object(), name="aio-cl")
        registry.register(collector(pool, keyed, cluster))
        try:
            pool.put(await pool.get())
            keyed.put(await keyed.get("k"))
            cluster.put(await cluster.get())
            return scrape(registry)
        finally:
            await pool.close()
            await keyed.close()
            await cluster.close()

    samples = asyncio.run(scenario())
    assert value(samples, "gocp_lends_total", pool="aio-pool", address="") == 1
    assert value(samples, "gocp_size", pool="aio-pool", address="") == 2
    assert value(samples, "gocp_lends_total", pool="aio-keyed", address="k") == 1
    lends = [value(samples, "gocp_lends_total", pool="aio-cl", address=a) for a in "xy"]
    assert sorted(lends) == [0, 1]
