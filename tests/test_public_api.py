"""The public surface: names exported once, reported as ``gocp``; the error hierarchy."""

from __future__ import annotations

import inspect

import pytest

import gocp

EXPECTED = {
    "ConnectionBroken",
    "DialError",
    "Error",
    "IOTimeout",
    "Options",
    "PersistentConn",
    "Pool",
    "PoolClosed",
    "PoolStats",
    "PoolTimeout",
    "new",
}


def test_all_is_sorted_without_duplicates():
    assert list(gocp.__all__) == sorted(gocp.__all__)
    assert len(set(gocp.__all__)) == len(gocp.__all__)


def test_all_holds_the_core_names():
    assert set(gocp.__all__) >= EXPECTED


@pytest.mark.parametrize("name", gocp.__all__)
def test_every_exported_name_exists_and_reports_module_gocp(name):
    obj = getattr(gocp, name)
    assert obj.__module__ == "gocp", f"{name}.__module__ is {obj.__module__!r}"
    assert obj.__name__ == name


def test_every_public_attribute_is_in_all():
    public = {
        name
        for name, obj in vars(gocp).items()
        if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
    }
    assert public == set(gocp.__all__)


def test_each_object_is_exported_under_one_name():
    objects = [id(getattr(gocp, name)) for name in gocp.__all__]
    assert len(objects) == len(set(objects))


def test_version():
    assert isinstance(gocp.__version__, str)
    assert gocp.__version__.count(".") >= 1


def test_star_import_gives_exactly_all():
    namespace: dict[str, object] = {}
    exec("from gocp import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(gocp.__all__)


def test_testing_package_exports():
    import gocp.testing

    assert list(gocp.testing.__all__) == sorted(gocp.testing.__all__)
    assert {"EchoServer", "RequestReplyServer"} <= set(gocp.testing.__all__)


def test_new_is_keyword_only_after_address():
    params = inspect.signature(gocp.new).parameters
    assert next(iter(params)) == "address"
    assert params["address"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    for name in ("size", "logger"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["size"].default == 5
    assert params["logger"].default is None
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


# -- the error hierarchy ------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "bases"),
    [
        (gocp.ConnectionBroken, (gocp.Error, ConnectionError, OSError)),
        (gocp.DialError, (gocp.Error, ConnectionError, OSError)),
        (gocp.IOTimeout, (gocp.ConnectionBroken, gocp.Error, ConnectionError, TimeoutError)),
        (gocp.PoolTimeout, (gocp.Error, TimeoutError)),
        (gocp.PoolClosed, (gocp.Error,)),
        (gocp.Error, (Exception,)),
    ],
)
def test_error_bases(error, bases):
    for base in bases:
        assert issubclass(error, base), f"{error.__name__} is not a {base.__name__}"


def test_errors_kept_apart():
    # "You closed it" is not "the peer broke it"; a pool timeout is not a broken connection.
    assert not issubclass(gocp.PoolClosed, ConnectionError)
    assert not issubclass(gocp.PoolClosed, TimeoutError)
    assert not issubclass(gocp.PoolTimeout, ConnectionError)
    assert not issubclass(gocp.DialError, gocp.ConnectionBroken)
    assert not issubclass(gocp.ConnectionBroken, TimeoutError)
    assert not issubclass(gocp.DialError, TimeoutError)


def test_errors_carry_context():
    broken = gocp.ConnectionBroken("recv failed", address="h:1")
    assert broken.address == "h:1"
    assert str(broken) == "recv failed"
    timeout = gocp.IOTimeout("slow", address="h:2")
    assert timeout.address == "h:2"
    dial = gocp.DialError("refused", address="h:3", retry_in=0.25)
    assert (dial.address, dial.retry_in) == ("h:3", 0.25)
    pool_timeout = gocp.PoolTimeout("busy", timeout=1.5)
    assert pool_timeout.timeout == 1.5


def test_errors_require_their_context():
    with pytest.raises(TypeError):
        gocp.ConnectionBroken("no address")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        gocp.DialError("x", address="h:1")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        gocp.PoolTimeout("x")  # type: ignore[call-arg]


def test_one_root_catches_every_pool_error():
    errors = [
        gocp.ConnectionBroken("a", address="h:1"),
        gocp.IOTimeout("b", address="h:1"),
        gocp.DialError("c", address="h:1", retry_in=0.0),
        gocp.PoolTimeout("d", timeout=0.0),
        gocp.PoolClosed("e"),
    ]
    for error in errors:
        with pytest.raises(gocp.Error):
            raise error
