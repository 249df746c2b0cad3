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
    {"a": 1, 2: "b", -3: None, 2**64 - 1: "largest key", -(2**63): "smallest key"},
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
        (MyStr("x"), "value", "MyStr"),
        (Colour.RED, "value", "Colour"),
        ([1, {"k": [object()]}], "value[1]['k'][0]", "builtins.object"),
        ((1, (2, {3})), "value[1][1]", "builtins.set"),
        ({"a": {(1, 2): 3}}, "value['a'][(1, 2)]", "a dict key of type tuple"),
        ({b"x": 1}, "value[b'x']", "a dict key of type bytes"),
        ({1.5: 1}, "value[1.5]", "a dict key of type float"),
        ({None: 1}, "value[None]", "a dict key of type NoneType"),
        ([{True: 1}], "value[0][True]", "a dict key of type bool"),
        ({"a": {2**64: 1}}, "value['a'][18446744073709551616]", "a dict key beyond 64 bits"),
        ({-(2**63) - 1: 1}, "value[-9223372036854775809]", "a dict key beyond 64 bits"),
        ({2**300: 1}, "value[<a 301-bit int>]", "a dict key beyond 64 bits"),
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


@pytest.mark.parametrize(
    "value",
    [bytearray(b"x"), memoryview(b"x"), memoryview(bytes(range(12))).cast("B", (3, 4))],
    ids=repr,
)
def test_bytes_like_values_are_sent_as_bytes(value: Any) -> None:
    assert _values.decode(_values.encode(value)) == bytes(value)
    assert _values.decode(_values.encode([value, {"k": value}])) == [
        bytes(value),
        {"k": bytes(value)},
    ]


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
int_keys = st.integers(min_value=-(2**63), max_value=2**64 - 1)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(st.text(max_size=5) | int_keys, children, max_size=5)
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


# ------------------------------------------------------------- hostile shapes
# Python's int hash is the value modulo 2**61 - 1: a dict of big-int keys that hash alike
# takes quadratic time to build. Within 64 bits, at most 13 ints share a hash.

M61 = 2**61 - 1


def big_int(n: int) -> msgpack.ExtType:
    """``n`` as ``encode`` sends an integer beyond 64 bits."""
    return msgpack.ExtType(2, n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True))


def test_a_dict_of_colliding_big_int_keys_is_refused() -> None:
    data = msgpack.packb({big_int(M61 * (i + 2**3)): 0 for i in range(30_000)})
    with pytest.raises(ValueError, match=r"a dict key of 6\d bits: int keys must fit in 64 bits"):
        _values.decode(data)


def test_a_dict_of_the_most_colliding_64_bit_keys_decodes() -> None:
    # 8 positive keys share each positive hash, 4 negative ones each negative hash.
    keys = [h + k * M61 for h in range(2, 5002) for k in range(8)]
    keys += [-(h + k * M61) for h in range(2, 5002) for k in range(4)]
    assert len({hash(k) for k in keys}) == 10_000
    value = dict.fromkeys(keys, 0)
    assert roundtrip(value) == value  # assert_same compares keys pairwise: too slow here


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=-(2**80), max_value=2**80), max_size=5))
def test_property_int_keys_cross_exactly_when_they_fit_in_64_bits(keys: list[int]) -> None:
    value = dict.fromkeys(keys, "v")
    fits = all(-(2**63) <= key < 2**64 for key in keys)
    data = msgpack.packb({big_int(k) if k >= 2**64 or k < -(2**63) else k: "v" for k in keys})
    if fits:
        assert_same(roundtrip(value), value)
        assert_same(_values.decode(data), value)
    else:
        with pytest.raises(TypeError, match="beyond 64 bits"):
            _values.encode(value)
        with pytest.raises(ValueError, match="64 bits"):
            _values.decode(data)


def array_header(n: int) -> bytes:
    return b"\xdd" + n.to_bytes(4, "big")


def map_header(n: int) -> bytes:
    return b"\xdf" + n.to_bytes(4, "big")


BOMBS = {
    # 10 MB on the wire; 640 MiB of lists once decoded, before the limit
    "10M empty lists": lambda: array_header(10_000_000) + b"\x90" * 10_000_000,
    "10M empty lists in 10k lists": lambda: (
        array_header(10_000) + (b"\xdc" + (1000).to_bytes(2, "big") + b"\x90" * 1000) * 10_000
    ),
    "5M empty dicts in 5k lists": lambda: (
        array_header(5000) + (b"\xdc" + (1000).to_bytes(2, "big") + b"\x80" * 1000) * 5000
    ),
    # -10 is one byte, and an int object of its own (only -5..256 are shared)
    "5M small negative ints in 5k lists": lambda: (
        array_header(5000) + (b"\xdc" + (1000).to_bytes(2, "big") + b"\xf6" * 1000) * 5000
    ),
    "a map of 3M entries": lambda: map_header(3_000_000) + b"\x00\x90" * 3_000_000,
}


@pytest.mark.parametrize("make", BOMBS.values(), ids=BOMBS.keys())
def test_expansion_bombs_are_refused_naming_the_limit(make: Any) -> None:
    with pytest.raises(ValueError, match=r"more than [\d,]+ objects") as excinfo:
        _values.decode(make())
    assert f"more than {_values.MAX_OBJECTS:,} objects (MAX_OBJECTS" in str(excinfo.value)


def test_a_value_of_exactly_max_objects_decodes_and_one_more_is_refused() -> None:
    # An array counts itself and each of its items.
    fits = array_header(_values.MAX_OBJECTS - 1) + b"\xc0" * (_values.MAX_OBJECTS - 1)
    assert len(_values.decode(fits)) == _values.MAX_OBJECTS - 1
    too_many = array_header(_values.MAX_OBJECTS) + b"\xc0" * _values.MAX_OBJECTS
    with pytest.raises(ValueError, match="MAX_OBJECTS"):
        _values.decode(too_many)


def test_encode_refuses_a_value_the_other_side_would_refuse() -> None:
    # Sent anyway, it would break the session (the peer's decode is a protocol error).
    with pytest.raises(ValueError, match=f"more than {_values.MAX_OBJECTS:,} objects"):
        _values.encode([[None] * 1000] * (_values.MAX_OBJECTS // 1000))
    assert _values.encode([None] * (_values.MAX_OBJECTS - 1))


def nested_tuples(inner: bytes, depth: int) -> bytes:
    """``inner`` inside ``depth`` one-element tuples, as ``encode`` writes them."""
    for _ in range(depth):
        inner = msgpack.packb(msgpack.ExtType(1, b"\x91" + inner))
    return inner


def test_tuples_nested_around_a_large_value_are_refused() -> None:
    # Each tuple level holds its items' encoding and is read from a copy of it: 32
    # levels around 8 MiB made 256 MiB of copies.
    data = nested_tuples(msgpack.packb(bytes(8 * 2**20)), _values.MAX_TUPLE_DEPTH - 1)
    with pytest.raises(ValueError, match="TUPLE_COPY"):
        _values.decode(data)


def test_tuples_in_tuples_of_ordinary_size_decode() -> None:
    large = ((bytes(8 * 2**20), "x"), [(1, 2)] * 1000)
    assert_same(roundtrip(large), large)
    deep: Any = b"leaf" * 100
    for n in range(_values.MAX_TUPLE_DEPTH):
        deep = (n, deep)
    assert_same(roundtrip(deep), deep)


LARGE_VALUES = {
    "64 MiB of bytes": lambda: bytes(64 * 2**20),
    "1M floats": lambda: [i / 7 for i in range(1_000_000)],
    "1M ints": lambda: list(range(-500_000, 500_000)),
    "1M short strings": lambda: [f"s{i}" for i in range(1_000_000)],
    "a dict of 1M str keys": lambda: {f"key{i}": i for i in range(1_000_000)},
    "a 2000x2000 matrix": lambda: [[float(i)] * 2000 for i in range(2000)],
    "100k records": lambda: [
        {"id": i, "name": f"n{i}", "tags": ("a", "b")} for i in range(100_000)
    ],
}


@pytest.mark.parametrize("make", LARGE_VALUES.values(), ids=LARGE_VALUES.keys())
def test_large_legitimate_values_round_trip(make: Any) -> None:
    value = make()
    assert roundtrip(value) == value


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb(msgpack.Timestamp(1, 0)),
        msgpack.packb([1, [msgpack.Timestamp(1, 0)]]),
        msgpack.packb({"when": msgpack.Timestamp(1, 0)}),
        msgpack.packb(msgpack.ExtType(1, msgpack.packb([msgpack.Timestamp(1, 0)]))),
    ],
    ids=["alone", "in a list", "in a dict", "in a tuple"],
)
def test_decode_refuses_msgpack_timestamps(data: bytes) -> None:
    with pytest.raises(ValueError, match="timestamp"):
        _values.decode(data)
