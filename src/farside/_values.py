"""The safe value codec: the only way Python values cross the enclave boundary.

Values are data only: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``,
and ``list``/``tuple``/``dict`` of those (dict keys ``str`` or ``int``). They are
encoded with msgpack, never pickle, because decoding must not be able to run code
on the receiving side of a trust boundary. Tuples and integers beyond 64 bits
survive the round trip through two msgpack extension types.

``encode`` raises ``TypeError`` naming the path of the first value it cannot send
(``args[1]['key'][0]``), before anything is sent. ``decode`` raises ``ValueError``
on bytes that are not a valid encoding of such values (including dict keys that
are not ``str``/``int``); callers map it to ``ProtocolError``.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

__all__ = ["MAX_DEPTH", "Value", "decode", "encode"]

Value = Any
"""A value farside can send: see the module docstring for what that is."""

MAX_DEPTH = 256
"""Containers nested deeper than this are refused by ``encode``; ``decode`` is bounded
by msgpack's own stack (about 1,000 levels) and refuses deeper input."""

MAX_TUPLE_DEPTH = 32
"""Tuples nested in tuples deeper than this are refused, on both ends.

Each tuple level is a nested msgpack call on the C stack, so the bound keeps a
hostile peer from exhausting it."""

_EXT_TUPLE = 1
_EXT_BIGINT = 2
_SCALARS = (type(None), bool, int, float, str, bytes)
_SUPPORTED = (*_SCALARS, list, tuple, dict)
_nesting = threading.local()


class _TupleDepth:
    """Counts tuple nesting on this thread; raises ``error`` beyond MAX_TUPLE_DEPTH."""

    def __init__(self, error: type[Exception]) -> None:
        self._error = error

    def __enter__(self) -> None:
        depth = getattr(_nesting, "depth", 0) + 1
        if depth > MAX_TUPLE_DEPTH:
            raise self._error(f"tuples nested deeper than {MAX_TUPLE_DEPTH}")
        _nesting.depth = depth

    def __exit__(self, *exc: object) -> None:
        _nesting.depth -= 1


def _default(obj: object) -> msgpack.ExtType:
    if type(obj) is tuple:
        with _TupleDepth(TypeError):
            return msgpack.ExtType(_EXT_TUPLE, _packb(list(obj)))
    if type(obj) is int:  # only reached for integers beyond 64 bits
        length = (obj.bit_length() + 8) // 8
        return msgpack.ExtType(_EXT_BIGINT, obj.to_bytes(length, "big", signed=True))
    raise TypeError(type(obj).__name__)


def _packb(value: object) -> bytes:
    data: bytes = msgpack.packb(value, default=_default, strict_types=True, use_bin_type=True)
    return data


def _ext_hook(code: int, data: bytes) -> object:
    if code == _EXT_TUPLE:
        with _TupleDepth(ValueError):
            inner = _unpackb(data)
        if not isinstance(inner, list):
            raise ValueError("tuple extension does not hold an array")
        return tuple(inner)
    if code == _EXT_BIGINT:
        return int.from_bytes(data, "big", signed=True)
    raise ValueError(f"unknown msgpack extension type {code}")


def _dict_from_pairs(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    for key, _ in pairs:
        if type(key) is not str and type(key) is not int:
            raise ValueError(f"a dict key of type {type(key).__name__}")
    return dict(pairs)


def _unpackb(data: bytes) -> object:
    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=False,
        ext_hook=_ext_hook,
        object_pairs_hook=_dict_from_pairs,
        use_list=True,
    )


def _find_unsupported(value: object, path: str, depth: int) -> tuple[str, str] | None:
    """Return (path, reason) of the first value ``encode`` refuses, or None."""
    if depth > MAX_DEPTH:
        return path, f"containers nested deeper than {MAX_DEPTH}"
    kind = type(value)
    if kind in _SCALARS:
        return None
    if isinstance(value, list | tuple) and kind in (list, tuple):
        for index, item in enumerate(value):
            found = _find_unsupported(item, f"{path}[{index}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, dict) and kind is dict:
        for key, item in value.items():
            if type(key) not in (str, int):
                return f"{path}[{key!r}]", f"a dict key of type {type(key).__name__}"
            found = _find_unsupported(item, f"{path}[{key!r}]", depth + 1)
            if found:
                return found
        return None
    return path, f"a value of type {kind.__module__}.{kind.__qualname__}"


def encode(value: Value, *, what: str = "value") -> bytes:
    """Encode ``value`` for the wire; ``what`` names it in the error message.

    Raises ``TypeError`` for anything outside the supported types, naming its path.
    """
    # Containers are walked first: msgpack packs some types we refuse (bytearray,
    # memoryview, dict keys that are neither str nor int), and nesting deeper than
    # MAX_DEPTH must be refused before packing it could exhaust the C stack.
    data = b""
    found = _find_unsupported(value, what, 0) if type(value) in (list, tuple, dict) else None
    if found is None:
        try:
            if type(value) not in _SUPPORTED:
                raise TypeError(type(value).__name__)
            data = _packb(value)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            found = _find_unsupported(value, what, 0) or (what, str(exc))
    if found:
        path, reason = found
        raise TypeError(
            f"cannot send {reason} at {path}: farside values are None, bool, int, "
            "float, str, bytes, and list/tuple/dict of those (dict keys str or int)"
        )
    return data


def decode(data: bytes) -> Value:
    """Decode bytes made by ``encode``; raises ``ValueError`` if they are not valid."""
    try:
        value = _unpackb(data)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        detail = str(exc) or type(exc).__name__
        raise ValueError(f"invalid value encoding: {detail}") from None
    # msgpack decodes its timestamp extension (type -1, tagged 0xff) itself, past our
    # ext_hook; only data holding that byte can hide one, so only it is walked.
    if b"\xff" in data and _holds_timestamp(value):
        raise ValueError("invalid value encoding: a msgpack timestamp is not a farside value")
    return value


def _holds_timestamp(value: object) -> bool:
    """True if a decoded value holds a msgpack Timestamp (iterative: values nest deeply)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, msgpack.Timestamp):
            return True
        if isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return False
