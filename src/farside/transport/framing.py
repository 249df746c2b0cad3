"""The stream framing, without I/O: frames to bytes and bytes back to frames.

A stream connection (``farside.transport.stream``, and any other driver of the same
wire, such as an asyncio one) carries, after its handshake, a sequence of
*messages*: a 4-byte big-endian length, then that many bytes of one serialized
``Batch``. ``encode_frames`` makes the messages for a list of frames (as a list of
byte strings to write in order, so that large batches are never joined); a reader
appends what it reads to one ``bytearray`` and calls ``split_messages``, which takes
every complete message off its front and returns their frames in order.
"""

from __future__ import annotations

import struct

from .._proto.v1 import session_pb2 as pb
from .base import MAX_MESSAGE_BYTES, batches

__all__ = ["LENGTH", "encode_frames", "split_messages"]

LENGTH = struct.Struct(">I")
"""The length prefix of every message."""


def encode_frames(frames: list[pb.Frame]) -> list[bytes]:
    """The messages carrying ``frames``, in order: byte strings to write one after another."""
    if len(frames) == 1:
        body = pb.Batch(frames=frames).SerializeToString()
        return [LENGTH.pack(len(body)) + body]
    parts: list[bytes] = []
    for batch in batches(frames):  # large values: no copy joins the batches
        body = batch.SerializeToString()
        parts.append(LENGTH.pack(len(body)))
        parts.append(body)
    return parts


def split_messages(buffer: bytearray, limit: int = MAX_MESSAGE_BYTES) -> list[pb.Frame]:
    """Take every complete message off the front of ``buffer``; return their frames.

    What is left is the start of the next message. ``ConnectionError`` if a message
    declares more than ``limit`` bytes; ``google.protobuf.message.DecodeError`` if one
    does not parse (either way the stream cannot go on).
    """
    frames: list[pb.Frame] = []
    offset = 0
    size_of = LENGTH.size
    while len(buffer) - offset >= size_of:
        (size,) = LENGTH.unpack_from(buffer, offset)
        if size > limit:
            raise ConnectionError(f"the peer sent a {size}-byte message (the limit is {limit})")
        end = offset + size_of + size
        if len(buffer) < end:
            break
        with memoryview(buffer) as view, view[offset + size_of : end] as message:
            frames.extend(pb.Batch.FromString(message).frames)  # type: ignore[arg-type]  # in place
        offset = end
    if offset:
        del buffer[:offset]
    return frames
