"""The safe value codec (``farside._values``): what crosses the boundary, and what does not."""

from __future__ import annotations

import contextlib
import enum
import math
import subprocess
import sys
import textwrap
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from farside import _values


def assert_same(got: Any, want: Any) -> None:
    """Equal, and of the same types all the way down (tuple stays tuple, bool stays bool)."""
    assert type(got) is type(want), f"{got!r} is a {type(got).__name__}, want {type(want).__name__}"
    if isinstance(want, list | tuple):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            assert type(next(k for k in got if k == key)) is type(key)
            assert_same(got[key], want[key])
    elif isinstance(want, float) and math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == want


def roundtrip(value: Any) -> Any:
    data = _values.encode(value)
    assert isinstance(data, bytes)
    return _values.decode(data)


# ----------------------------------------------------------------- round trips

SCALARS = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,  # the largest msgpack uint
    2**64,  # beyond 64 bits: the bigint extension
    -(2**63) - 1,
    2**200,
    -(2**200),
    -(2**64),
    0.0,
    -0.0,
    -1.5,
    1e308,
    float("inf"),
    float("-inf"),
    "",
    "héllo ☃ \x00 \U0001f600",
    b"",
    b"\x00\xff" * 100,
]


@pytest.mark.parametrize("value", SCALARS, ids=repr)
def test_scalars_round_trip(value: Any) -> None:
    assert_same(roundtrip(value), value)


def test_nan_round_trips() -> None:
    assert math.isnan(roundtrip(float("nan")))


CONTAINERS = [
    [],
    (),
    {},
    [1, [2, [3, [4]]]],
    (1,),
    (1, (2, 3), [4, (5,)]),
    {"a": 1, 2: "b", -3: None, 2**70: "big key"},
    {"k": (1, [2, (3,)]), "b": b"bytes", "nested": {"x": {"y": ()}}},
    [(), [()], {"t": ()}],
    [True, 1, 1.0, "1", b"1"],  # bool/int/float stay distinct
]


@pytest.mark.parametrize("value", CONTAINERS, ids=repr)
def test_containers_round_trip_with_their_types(value: Any) -> None:
    assert_same(roundtrip(value), value)


def test_tuple_is_not_turned_into_list() -> None:
    decoded = roundtrip({"t": (1, 2), "l": [1, 2]})
    assert type(decoded["t"]) is tuple
    assert type(decoded["l"]) is list


def test_nesting_up_to_max_depth_is_accepted() -> None:
    value: Any = []
    for _ in range(_values.MAX_DEPTH):
        value = [value]
    assert_same(roundtrip(value), value)


# ----------------------------------------------------------- refused values


class Custom:
    pass


class MyStr(str):
    __slots__ = ()


class Colour(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize(
    ("value", "path", "reason"),
    [
        ({1, 2}, "value", "builtins.set"),
        (frozenset(), "value", "builtins.frozenset"),
        (object(), "value", "builtins.object"),
        (Custom(), "value", "Custom"),
        ([bytearray(b"x")], "value[0]", "builtins.bytearray"),
        (MyStr("x"), "value", "MyStr"),
        (Colour.RED, "value", "Colour"),
        ([1, {"k": [object()]}], "value[1]['k'][0]", "builtins.object"),
        ((1, (2, {3})), "value[1][1]", "builtins.set"),
        ({"a": {(1, 2): 3}}, "value['a'][(1, 2)]", "a dict key of type tuple"),
        ({b"x": 1}, "value[b'x']", "a dict key of type bytes"),
        ({1.5: 1}, "value[1.5]", "a dict key of type float"),
        ({None: 1}, "value[None]", "a dict key of type NoneType"),
        ([{True: 1}], "value[0][True]", "a dict key of type bool"),
    ],
    ids=repr,
)
def test_unsupported_values_raise_type_error_naming_the_path(
    value: Any, path: str, reason: str
) -> None:
    with pytest.raises(TypeError) as excinfo:
        _values.encode(value)
    message = str(excinfo.value)
    assert f" at {path}" in message
    assert reason in message


@pytest.mark.parametrize("value", [bytearray(b"x"), memoryview(b"x")], ids=repr)
def test_bytes_like_values_are_refused_at_top_level_too(value: Any) -> None:
    with pytest.raises(TypeError):
        _values.encode(value)


def test_type_error_uses_the_callers_name_for_the_value() -> None:
    with pytest.raises(TypeError, match=r"at args\[0\]\[1\]"):
        _values.encode([[1, Custom()], {}], what="args")


def test_str_that_is_not_valid_unicode_is_a_type_error_not_a_unicode_error() -> None:
    with pytest.raises(TypeError, match="surrogates"):
        _values.encode(["ok", "\udcff"])


def test_nesting_beyond_max_depth_is_refused() -> None:
    value: Any = []
    for _ in range(_values.MAX_DEPTH + 1):
        value = [value]
    with pytest.raises(TypeError, match=f"nested deeper than {_values.MAX_DEPTH}"):
        _values.encode(value)


def test_deeply_nested_tuples_are_a_type_error() -> None:
    value: Any = None
    for n in range(2000):
        value = (n, value)
    with pytest.raises(TypeError, match="nested deeper"):
        _values.encode(value)


# ------------------------------------------------------------- decode errors

GARBAGE = [
    b"",  # nothing
    b"\xc1",  # the one byte msgpack never uses
    b"\x92\x01",  # array of 2 with one element
    b"\x01\x02",  # extra data after a value
    b"\xd9\x05ab",  # truncated str
    b"\xa2\xff\xfe",  # str that is not UTF-8
    msgpack.packb(msgpack.ExtType(9, b"")),  # unknown extension
    msgpack.packb(msgpack.ExtType(1, msgpack.packb(5))),  # tuple ext not holding an array
    msgpack.packb(msgpack.ExtType(1, b"\xc1")),  # tuple ext holding garbage
    b"\x81\x90\x01",  # map whose key is an array (unhashable)
]


@pytest.mark.parametrize("data", GARBAGE, ids=repr)
def test_decode_raises_value_error_on_garbage(data: bytes) -> None:
    with pytest.raises(ValueError, match="invalid value encoding"):
        _values.decode(data)


def run_isolated(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter: a crash there must not take pytest with it."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_legitimately_encoded_deep_tuples_decode_without_crashing() -> None:
    result = run_isolated(
        """
        from farside import _values
        value = None
        for n in range(_values.MAX_TUPLE_DEPTH):
            value = (n, value)
        assert _values.decode(_values.encode(value)) == value
        try:
            _values.encode((0, value))
        except TypeError as exc:
            assert "tuples nested deeper" in str(exc), exc
        else:
            raise AssertionError("a tuple nested too deeply was encoded")
        print("round trip ok")
        """
    )
    assert result.returncode == 0, f"interpreter died with {result.returncode}"
    assert "round trip ok" in result.stdout


def test_decode_of_maliciously_deep_tuple_extensions_is_a_value_error() -> None:
    result = run_isolated(
        """
        import msgpack
        from farside import _values
        data = msgpack.packb([])
        for _ in range(1000):
            data = msgpack.packb(msgpack.ExtType(1, b"\\x91" + data))
        try:
            _values.decode(data)
        except ValueError:
            print("refused")
        """
    )
    assert result.returncode == 0, f"interpreter died with {result.returncode}"
    assert "refused" in result.stdout


def test_decode_refuses_nesting_beyond_msgpacks_stack() -> None:
    data = msgpack.packb([])
    data = b"\x91" * 5000 + data  # 5,000 nested one-element arrays
    with pytest.raises(ValueError, match=r"invalid value encoding"):
        _values.decode(data)


@pytest.mark.parametrize("key", [b"k", 1.5, None], ids=repr)
def test_decode_refuses_dict_keys_that_are_not_str_or_int(key: Any) -> None:
    with pytest.raises(ValueError, match=r"invalid value encoding|key"):
        _values.decode(msgpack.packb({key: 1}, use_bin_type=True))


# ------------------------------------------------------------- properties

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**130), max_value=2**130)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_property_supported_values_round_trip(value: Any) -> None:
    assert_same(roundtrip(value), value)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_property_decode_raises_only_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        _values.decode(data)


@settings(max_examples=300, deadline=None)
@given(values, st.data())
def test_property_decode_of_corrupted_encoding_raises_only_value_error(
    value: Any, data: st.DataObject
) -> None:
    encoded = bytearray(_values.encode(value))
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    with contextlib.suppress(ValueError):
        _values.decode(bytes(encoded[:cut]))
