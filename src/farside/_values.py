"""The safe value codec: the only way Python values cross the enclave boundary.

Values are data only: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``,
and ``list``/``tuple``/``dict`` of those (dict keys ``str`` or 64-bit ``int``). They
are encoded with msgpack, never pickle, because decoding must not be able to run code
on the receiving side of a trust boundary. Tuples and integers beyond 64 bits
survive the round trip through two msgpack extension types. ``bytearray`` and
``memoryview`` are sent as their bytes and arrive as ``bytes``.

Large bytes travel out of band: ``encode(value, blobs=[])`` puts every bytes-like value
of at least ``BLOB_THRESHOLD`` bytes into ``blobs`` (by reference, uncopied) and packs
an extension in its place (type 3: the blob's index, 4 bytes big-endian); ``decode(data,
blobs=...)`` puts them back, each exactly once. So msgpack never copies them; the
session moves them beside the value (``Blob`` frames).

``encode`` raises ``TypeError`` naming the path of the first value it cannot send
(``args[1]['key'][0]``), and ``ValueError`` for a value larger than ``decode``
accepts, before anything is sent. ``decode`` raises ``ValueError`` on bytes that are
not a valid encoding of such values (including dict keys that are not ``str`` or
64-bit ``int``) and on values beyond its limits; callers map it to ``ProtocolError``.

Decoding is bounded whoever encoded the bytes: in time, linear in their size (no
dict whose keys hash alike); in memory, by ``MAX_OBJECTS`` objects and by
``TUPLE_COPY_FACTOR`` for the copies nested tuples make.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Iterable
from typing import Any

import msgpack

__all__ = [
    "MAX_DEPTH",
    "MAX_OBJECTS",
    "BLOB_THRESHOLD",
    "MAX_TUPLE_DEPTH",
    "TUPLE_COPY_FACTOR",
    "Value",
    "decode",
    "encode",
]

Value = Any
"""A value farside can send: see the module docstring for what that is."""

MAX_DEPTH = 256
"""Containers nested deeper than this are refused by ``encode``; ``decode`` is bounded
by msgpack's own stack (about 1,000 levels) and refuses deeper input."""

MAX_TUPLE_DEPTH = 32
"""Tuples nested in tuples deeper than this are refused, on both ends.

Each tuple level is a nested msgpack call on the C stack, so the bound keeps a
hostile peer from exhausting it."""

MAX_OBJECTS = 2**22
"""Most objects one value may hold (4,194,304), on both ends.

Each list, tuple and dict counts one, plus one per item (a dict: one per key and one
per value); a lone scalar counts one. Decoding makes an object for nearly every item,
of at most about 100 bytes beyond its payload (an empty list or dict, a short str, an
int outside -5..256), so a decoded value takes at most about 400 MiB plus its
payload (up to 4 bytes per encoded byte of str, 1 of bytes), however it was encoded.
Without the limit ``[[]] * 10_000_000``, 10 MB on the wire, decoded to 640 MiB. It
leaves room for a 2000 x 2000 matrix of floats as lists, or a dict of 2 million
entries; larger uniform data travels better as ``bytes``. An array or map longer than
the limit allows is refused from its header, before anything is built."""

TUPLE_COPY_FACTOR = 4
"""How much tuple payload one decode may copy, per byte of the value (plus 1 MiB).

A tuple travels as an extension holding its items' encoding, which msgpack hands to
the decoder as a copy, so a tuple nested in tuples is copied once per level: 32 levels
around 8 MiB made 256 MiB. Ordinary values copy at most about their own size."""

_TUPLE_COPY_ALLOWANCE = 2**20
_INT_KEY_MIN = -(2**63)  # dict keys: msgpack's own integers, int64 to uint64
_INT_KEY_MAX = 2**64 - 1
_REFUSED = "invalid value encoding"
_EXT_TUPLE = 1
_EXT_BIGINT = 2
_EXT_BLOB = 3
_BYTES_LIKE = (bytes, bytearray, memoryview)

BLOB_THRESHOLD = 64 * 2**10
"""Bytes-like values this large travel out of band when ``encode`` is given ``blobs``."""
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


class _Blob:
    """Stands for ``blobs[index]`` while msgpack packs the value around it."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _as_bytes(value: bytes | bytearray | memoryview) -> bytes | memoryview:
    """The bytes of a bytes-like value: itself (bytes), or a flat byte view (no copy if
    it is contiguous)."""
    if type(value) is bytes:
        return value
    view = memoryview(value)
    if view.c_contiguous:
        return view.cast("B") if view.format != "B" or view.ndim != 1 else view
    return view.tobytes()


def _extract(value: object, blobs: list[bytes | memoryview] | None) -> object:
    """``value`` with large bytes-like values replaced by ``_Blob``s (appended to ``blobs``)
    and small ``bytearray``/``memoryview`` values by ``bytes``. Only containers holding
    such values are rebuilt; ``value`` has passed ``_Walk``."""
    kind = type(value)
    if kind in _BYTES_LIKE:
        data = _as_bytes(value)  # type: ignore[arg-type]
        if blobs is not None and len(data) >= BLOB_THRESHOLD:
            blobs.append(data)
            return _Blob(len(blobs) - 1)
        return data if type(data) is bytes else bytes(data)
    if kind is list:
        return [_extract(item, blobs) for item in value]  # type: ignore[attr-defined]
    if kind is tuple:
        return tuple(_extract(item, blobs) for item in value)  # type: ignore[attr-defined]
    if kind is dict:
        return {key: _extract(item, blobs) for key, item in value.items()}  # type: ignore[attr-defined]
    return value


def _default(obj: object) -> msgpack.ExtType:
    if type(obj) is _Blob:
        return msgpack.ExtType(_EXT_BLOB, obj.index.to_bytes(4, "big"))
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


def _int_key_name(key: int) -> str:
    return repr(key) if key.bit_length() <= 128 else f"<a {key.bit_length()}-bit int>"


class _Decoder:
    """One ``decode``: msgpack's hooks, and the budget they spend as containers complete.

    Containers complete innermost first, so a value is refused as soon as the objects
    built so far pass the limit, not once it is whole.
    """

    def __init__(self, data: bytes, blobs: list[bytes] | None = None) -> None:
        self._blobs = blobs
        self._taken: set[int] = set()
        self._objects = MAX_OBJECTS
        self._tuple_copies = TUPLE_COPY_FACTOR * len(data) + _TUPLE_COPY_ALLOWANCE
        self._tuple_depth = 0
        # msgpack decodes its timestamp extension (type -1, tagged 0xff) itself, past
        # our ext_hook; only data holding that byte can hide one.
        self._timestamps = b"\xff" in data

    def unpack(self, data: bytes) -> object:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            ext_hook=self._ext,
            list_hook=self._list,
            object_pairs_hook=self._dict,
            use_list=True,
            # an array or map that alone passes the limit is refused from its header
            max_array_len=MAX_OBJECTS - 1,
            max_map_len=(MAX_OBJECTS - 1) // 2,
        )
        if self._timestamps and type(value) is msgpack.Timestamp:
            raise ValueError("a msgpack timestamp is not a farside value")
        return value

    def check_blobs(self) -> None:
        """Every blob given was taken (once)."""
        if self._blobs is not None and len(self._taken) != len(self._blobs):
            raise ValueError(
                f"{len(self._blobs) - len(self._taken)} of {len(self._blobs)} blobs "
                "were sent but not referenced by the value"
            )

    # The hooks run once per container, millions of times for some values: they call
    # no other method unless something is wrong.

    @staticmethod
    def _too_many() -> ValueError:
        return ValueError(
            f"the value holds more than {MAX_OBJECTS:,} objects (MAX_OBJECTS in "
            "farside._values); send large uniform data as bytes"
        )

    @staticmethod
    def _check_timestamps(items: Iterable[object]) -> None:
        if msgpack.Timestamp in map(type, items):
            raise ValueError("a msgpack timestamp is not a farside value")

    def _list(self, items: list[Any]) -> list[Any]:
        self._objects -= 1 + len(items)
        if self._objects < 0:
            raise self._too_many()
        if self._timestamps:
            self._check_timestamps(items)
        return items

    def _dict(self, pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
        self._objects -= 1 + 2 * len(pairs)
        if self._objects < 0:
            raise self._too_many()
        for key, _ in pairs:
            kind = type(key)
            if kind is int:
                if not _INT_KEY_MIN <= key <= _INT_KEY_MAX:
                    # Python hashes ints modulo 2**61 - 1: big keys that hash alike
                    # would make building the dict quadratic.
                    raise ValueError(
                        f"a dict key of {key.bit_length()} bits: int keys must fit in 64 "
                        f"bits (from -2**63 to 2**64 - 1)"
                    )
            elif kind is not str:
                raise ValueError(f"a dict key of type {kind.__name__}")
        if self._timestamps:
            self._check_timestamps(map(operator.itemgetter(1), pairs))
        return dict(pairs)

    def _ext(self, code: int, data: bytes) -> object:
        if code == _EXT_TUPLE:
            if self._tuple_depth >= MAX_TUPLE_DEPTH:
                raise ValueError(f"tuples nested deeper than {MAX_TUPLE_DEPTH}")
            self._tuple_copies -= len(data)
            if self._tuple_copies < 0:
                raise ValueError(
                    "tuples nested around too large a value: their copies pass "
                    f"{TUPLE_COPY_FACTOR} times its size plus 1 MiB (TUPLE_COPY_FACTOR in "
                    "farside._values)"
                )
            self._tuple_depth += 1
            try:
                inner = self.unpack(data)
            finally:
                self._tuple_depth -= 1
            if not isinstance(inner, list):
                raise ValueError("tuple extension does not hold an array")
            return tuple(inner)
        if code == _EXT_BIGINT:
            return int.from_bytes(data, "big", signed=True)
        if code == _EXT_BLOB and self._blobs is not None:
            index = int.from_bytes(data, "big")
            if len(data) != 4 or index >= len(self._blobs) or index in self._taken:
                raise ValueError(
                    f"a blob reference to #{index} of {len(self._blobs)} (or one made twice)"
                )
            self._taken.add(index)
            return self._blobs[index]
        raise ValueError(f"unknown msgpack extension type {code}")


class _Walk:
    """One walk of a value before ``encode`` packs it: what it refuses, and its size."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._objects = 0
        self.views = False  # it holds a bytearray or memoryview (sent as bytes)
        self.large = False  # it holds bytes of at least BLOB_THRESHOLD

    def _count(self, objects: int) -> None:
        self._objects += objects
        if self._objects > MAX_OBJECTS:
            raise ValueError(
                f"cannot send {self._what}: it holds more than {MAX_OBJECTS:,} objects, "
                "more than the other side decodes (MAX_OBJECTS in farside._values); send "
                "large uniform data as bytes"
            )

    def find_unsupported(self, value: object, path: str, depth: int) -> tuple[str, str] | None:
        """Return (path, reason) of the first value ``encode`` refuses, or None."""
        if depth > MAX_DEPTH:
            return path, f"containers nested deeper than {MAX_DEPTH}"
        kind = type(value)
        if kind in _SCALARS:
            if kind is bytes and len(value) >= BLOB_THRESHOLD:  # type: ignore[arg-type]
                self.large = True
            return None
        if kind is bytearray or kind is memoryview:
            self.views = True
            return None
        if isinstance(value, list | tuple) and kind in (list, tuple):
            self._count(1 + len(value))
            for index, item in enumerate(value):
                found = self.find_unsupported(item, f"{path}[{index}]", depth + 1)
                if found:
                    return found
            return None
        if isinstance(value, dict) and kind is dict:
            self._count(1 + 2 * len(value))
            for key, item in value.items():
                if type(key) not in (str, int):
                    return f"{path}[{key!r}]", f"a dict key of type {type(key).__name__}"
                if type(key) is int and not _INT_KEY_MIN <= key <= _INT_KEY_MAX:
                    return f"{path}[{_int_key_name(key)}]", "a dict key beyond 64 bits"
                found = self.find_unsupported(item, f"{path}[{key!r}]", depth + 1)
                if found:
                    return found
            return None
        return path, f"a value of type {kind.__module__}.{kind.__qualname__}"


def encode(
    value: Value, *, what: str = "value", blobs: list[bytes | memoryview] | None = None
) -> bytes:
    """Encode ``value`` for the wire; ``what`` names it in the error message.

    With ``blobs`` (a list), bytes-like values of at least ``BLOB_THRESHOLD`` bytes are
    appended to it instead (out of band, see the module docstring). Raises ``TypeError``
    for anything outside the supported types, naming its path, and ``ValueError`` for a
    value of more than ``MAX_OBJECTS`` objects.
    """
    # Containers are walked first: msgpack packs some types we refuse (bytearray,
    # memoryview, dict keys that are neither str nor int), and nesting deeper than
    # MAX_DEPTH must be refused before packing it could exhaust the C stack.
    if value is None:
        return _NONE_BYTES
    data = b""
    kind = type(value)
    container = kind in (list, tuple, dict)
    walk = _Walk(what)
    found = walk.find_unsupported(value, what, 0) if container else None
    if found is None:
        try:
            rebuild = container and (walk.views or (walk.large and blobs is not None))
            if kind in _BYTES_LIKE or rebuild:
                value = _extract(value, blobs)
            elif kind not in _SUPPORTED:
                raise TypeError(kind.__name__)
            data = _packb(value)
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            found = _Walk(what).find_unsupported(value, what, 0) or (what, str(exc))
    if found:
        path, reason = found
        raise TypeError(
            f"cannot send {reason} at {path}: farside values are None, bool, int, "
            "float, str, bytes, and list/tuple/dict of those (dict keys str or 64-bit int)"
        )
    return data


_NONE_BYTES = b"\xc0"
"""``encode(None)``: the value of every call that returns nothing."""
EMPTY_ARGS_BYTES = b"\x92\x90\x80"
"""``encode([[], {}])``: the arguments of every call made without any (the hot path
skips encoding and decoding them; ``decode`` still returns fresh containers)."""


def decode(data: bytes, *, blobs: list[bytes] | None = None) -> Value:
    """Decode bytes made by ``encode``; raises ``ValueError`` if they are not valid.

    ``blobs`` are the values ``encode`` put out of band, in order: each must be
    referenced exactly once.

    Also refuses, with a ``ValueError`` naming the limit, a value of more than
    ``MAX_OBJECTS`` objects, and tuples whose copies pass ``TUPLE_COPY_FACTOR``.
    """
    if not blobs:  # the two payloads of an empty call, without msgpack's hooks
        if data == _NONE_BYTES:
            return None
        if data == EMPTY_ARGS_BYTES:
            return [[], {}]
    try:
        decoder = _Decoder(data, blobs)
        value = decoder.unpack(data)
        decoder.check_blobs()
        return value
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        detail = str(exc) or type(exc).__name__
        if "exceeds max_array_len" in detail or "exceeds max_map_len" in detail:
            detail = (
                f"the value holds more than {MAX_OBJECTS:,} objects (MAX_OBJECTS in "
                f"farside._values; {detail}); send large uniform data as bytes"
            )
        raise ValueError(f"{_REFUSED}: {detail}") from None
