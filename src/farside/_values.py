"""The safe value codec: the only way Python values cross the enclave boundary.

Values are data only: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``,
and ``list``/``tuple``/``dict`` of those (dict keys ``str`` or ``int``). They are
encoded with msgpack, never pickle, because decoding must not be able to run code
on the receiving side of a trust boundary. Tuples and integers beyond 64 bits
survive the round trip through two msgpack extension types.

``encode`` raises ``TypeError`` naming the path of the first value it cannot send
(``args[1]['key'][0]``), before anything is sent. ``decode`` raises ``ValueError``
on bytes that are not a valid encoding; callers map it to ``ProtocolError``.
"""

from __future__ import annotations

from typing import Any

import msgpack

__all__ = ["MAX_DEPTH", "Value", "decode", "encode"]

Value = Any
"""A value farside can send: see the module docstring for what that is."""

MAX_DEPTH = 256
"""Containers nested deeper than this are refused, on both ends."""

_EXT_TUPLE = 1
_EXT_BIGINT = 2
_SCALARS = (type(None), bool, int, float, str, bytes)


def _default(obj: object) -> msgpack.ExtType:
    if type(obj) is tuple:
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
        inner = _unpackb(data)
        if not isinstance(inner, list):
            raise ValueError("tuple extension does not hold an array")
        return tuple(inner)
    if code == _EXT_BIGINT:
        return int.from_bytes(data, "big", signed=True)
    raise ValueError(f"unknown msgpack extension type {code}")


def _unpackb(data: bytes) -> object:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook, use_list=True)


def _find_unsupported(value: object, path: str, depth: int) -> tuple[str, str] | None:
    """Return (path, reason) of the first value ``encode`` refuses, or None."""
    if depth > MAX_DEPTH:
        return path, f"containers nested deeper than {MAX_DEPTH}"
    kind = type(value)
    if kind in _SCALARS:
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _find_unsupported(item, f"{path}[{index}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, dict):
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
    try:
        data = _packb(value)
    except (TypeError, ValueError, OverflowError) as exc:
        found = _find_unsupported(value, what, 0)
        path, reason = found if found else (what, str(exc))
        raise TypeError(
            f"cannot send {reason} at {path}: farside values are None, bool, int, "
            "float, str, bytes, and list/tuple/dict of those (dict keys str or int)"
        ) from None
    # msgpack accepts dict keys of any supported scalar type; we promise str or int.
    # Only containers can hide a bad key, so only they pay for the walk.
    if type(value) in (list, tuple, dict):
        found = _find_unsupported(value, what, 0)
        if found:
            path, reason = found
            raise TypeError(f"cannot send {reason} at {path}: dict keys must be str or int")
    return data


def decode(data: bytes) -> Value:
    """Decode bytes made by ``encode``; raises ``ValueError`` if they are not valid."""
    try:
        return _unpackb(data)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        detail = str(exc) or type(exc).__name__
        raise ValueError(f"invalid value encoding: {detail}") from None
