"""Stats and names of files as they cross the wire between the client and the enclave.

A stat is 100 bytes, the same on every system: the client's file service packs what
its ``os.stat`` says, the enclave's file system unpacks it into an ``os.stat_result``.
Packed, a directory listing of a thousand entries is a few thousand objects for the
value codec rather than fifteen thousand. A name is a ``str`` when it is valid UTF-8,
and otherwise the raw bytes of the file system's encoding (a ``str`` holding
undecodable bytes as surrogates cannot be encoded). Part of the base layer; it knows
nothing else.
"""

from __future__ import annotations

import os
import struct

__all__ = ["SIZE", "name_from_wire", "name_to_wire", "pack", "unpack"]

_FORMAT = struct.Struct("<IQQQQQQqqqQQQ")
"""mode, ino, dev, nlink, uid, gid, size, atime_ns, mtime_ns, ctime_ns, blksize,
blocks, rdev: little-endian, times signed, the rest unsigned."""
SIZE = _FORMAT.size


def pack(st: os.stat_result) -> bytes:
    """``st`` in its wire form."""
    return _FORMAT.pack(
        st.st_mode,
        st.st_ino,
        st.st_dev,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_atime_ns,
        st.st_mtime_ns,
        st.st_ctime_ns,
        getattr(st, "st_blksize", 0),
        getattr(st, "st_blocks", 0),
        getattr(st, "st_rdev", 0),
    )


def unpack(data: bytes) -> tuple[int, ...]:
    """The fields ``pack`` packed; ``ValueError`` unless ``data`` is exactly that long."""
    if len(data) != SIZE:
        raise ValueError(f"a packed stat is {SIZE} bytes, not {len(data)}")
    return _FORMAT.unpack(data)


def name_to_wire(name: str) -> str | bytes:
    """A path or name (as ``os`` gives it) in a form the value codec can carry."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name)
    return name


def name_from_wire(value: object) -> str:
    """Undo ``name_to_wire``; ``TypeError`` for anything but ``str`` or ``bytes``."""
    if isinstance(value, bytes):
        return os.fsdecode(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"a name crosses as str or bytes, not {type(value).__name__}")
