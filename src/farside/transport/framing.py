"""The stream framing, without I/O: frames to bytes and bytes back to frames.

A stream connection (``farside.transport.stream``, and any other driver of the same
wire, such as an asyncio one) carries, after its handshake, a sequence of
*messages*, each a 4-byte big-endian header and a body:

* header bit 31 clear: a *batch message*, the body (header & 0x7fffffff bytes) is one
  serialized ``Batch`` of frames;
* header bit 31 set: a *raw chunk*, the body is raw bytes of a blob (below).

Large bytes values travel out of band (``SessionCore`` puts them in ``Blob`` frames
that carry only their ``size``, ``farside._values`` leaves a placeholder in the msgpack
value). Right after the batch message holding such Blob frames, the sender writes each
blob's bytes, in the frames' order, as raw chunks of at most ``RAW_CHUNK`` bytes; a
chunk never spans two blobs. The receiver allocates each blob's buffer once from the
declared size (bounded by ``max_blob_bytes`` per batch), fills it from the chunks
(``recv_into`` where it can), and hands the batch's frames and the blobs to the session
together. A raw chunk nobody announced, one longer than what its blob still needs, a
batch before the announced bytes are complete, or declared sizes beyond the bound end
the connection with ``ConnectionError``.

``encode_frames(frames, blobs)`` makes the byte strings to write, in order (large
batches and blobs are never joined: blobs are sliced views of the caller's bytes);
``FrameReader`` takes what a reader reads and gives back frames and blobs.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence
from typing import Any

from .._proto.v1 import session_pb2 as pb
from .base import MAX_MESSAGE_BYTES, Buffer, batches

__all__ = [
    "LENGTH",
    "MAX_BLOB_BYTES",
    "RAW",
    "RAW_CHUNK",
    "FrameReader",
    "encode_frames",
    "split_messages",
]

LENGTH = struct.Struct(">I")
"""The header of every message."""
RAW = 0x8000_0000
"""Header bit: this message is a raw chunk of a blob."""
RAW_CHUNK = 4 * 2**20
"""The largest raw chunk a sender writes (a receiver accepts up to MAX_MESSAGE_BYTES)."""
MAX_BLOB_BYTES = 256 * 2**20
"""Blob bytes one batch may announce, unless the reader is told the session's own limit
on a value (``FrameReader.max_blob_bytes``; the stream sets it from its endpoint)."""


_FRESH_BYTES_MIN = 1 << 16  # never a cached small bytes object (b"", one-byte ones)
_BYTES_DATA = bytes.__basicsize__ - 1  # where a bytes object's data starts (CPython)


def _blob_buffer(size: int) -> tuple[bytes | bytearray, memoryview]:
    """A buffer for a blob of ``size`` bytes and a writable view of it.

    On CPython, large blobs are received straight into a fresh ``bytes`` object (made
    zeroed by calloc, so its pages are only touched by the receive; nothing else holds
    it until it is full), which the session then hands on without a copy; elsewhere,
    and for small sizes, into a ``bytearray`` the session copies once.
    """
    if size >= _FRESH_BYTES_MIN and sys.implementation.name == "cpython":
        import ctypes  # only once a large value arrives: it costs the cold load otherwise

        blob = bytes(size)
        array = (ctypes.c_char * size).from_address(id(blob) + _BYTES_DATA)
        return blob, memoryview(array).cast("B")
    buffer = bytearray(size)
    return buffer, memoryview(buffer)


_BLOB_TAG = bytes([pb.Frame.DESCRIPTOR.fields_by_name["blob"].number << 3 | 2])
"""The key of ``Frame.blob`` (field 10, length-delimited): every Blob frame's bytes hold it."""


_FRAMES_TAG = pb.Batch.DESCRIPTOR.fields_by_name["frames"].number << 3 | 2
"""The key of ``Batch.frames`` (field 1, length-delimited)."""


def _one_frame_batch(frame: pb.Frame) -> bytes:
    """``Batch(frames=[frame])`` serialized, without copying ``frame`` into a new Batch:
    the batch's bytes are the field's key, the frame's length (a varint) and the frame."""
    body = frame.SerializeToString()
    size = len(body)
    if size < 0x80:  # the hot path: an empty call's frames are a few bytes
        head = bytes((_FRAMES_TAG, size))
    else:
        varint = bytearray((_FRAMES_TAG,))
        while size >= 0x80:
            varint.append(size & 0x7F | 0x80)
            size >>= 7
        varint.append(size)
        head = bytes(varint)
    return LENGTH.pack(len(head) + len(body)) + head + body


def encode_frames(frames: list[pb.Frame], blobs: Sequence[Buffer] = ()) -> list[Buffer]:
    """The messages carrying ``frames`` and the out-of-band ``blobs`` of their Blob frames
    (those with no data), in order: byte strings and views to write one after another."""
    if len(frames) == 1 and not blobs:
        return [_one_frame_batch(frames[0])]
    parts: list[Buffer] = []
    pending = iter(blobs)
    for batch in batches(frames):  # large values: no copy joins the batches
        body = batch.SerializeToString()
        parts.append(LENGTH.pack(len(body)))
        parts.append(body)
        if not blobs:
            continue
        for frame in batch.frames:
            if frame.WhichOneof("kind") == "blob" and not frame.blob.data:
                view = memoryview(next(pending)).cast("B")
                for start in range(0, len(view), RAW_CHUNK):
                    piece = view[start : start + RAW_CHUNK]
                    parts.append(LENGTH.pack(RAW | len(piece)))
                    parts.append(piece)
    return parts


def split_messages(buffer: bytearray, limit: int = MAX_MESSAGE_BYTES) -> list[pb.Frame]:
    """Take every complete batch message off the front of ``buffer``; return their frames.

    For a wire without blobs (what is left is the start of the next message).
    ``ConnectionError`` if a message declares more than ``limit`` bytes or is a raw
    chunk; ``google.protobuf.message.DecodeError`` if a batch does not parse.
    """
    reader = FrameReader(limit=limit, max_blob_bytes=0)
    reader.buffer = buffer
    frames, _ = reader.take()
    return frames


class FrameReader:
    """What a reader read, as frames and blobs: ``feed`` bytes (or ``recv_into`` the view
    ``raw_target`` gives and call ``raw_written``), then ``take`` what is complete.

    One reader at a time (it is not thread-safe). ``ConnectionError`` (or a protobuf
    ``DecodeError``) from ``take`` means the stream cannot go on.
    """

    def __init__(
        self, *, limit: int = MAX_MESSAGE_BYTES, max_blob_bytes: int = MAX_BLOB_BYTES
    ) -> None:
        self.buffer = bytearray()  # read, not yet parsed
        self._limit = limit
        self.max_blob_bytes = max_blob_bytes
        self._held: list[pb.Frame] = []  # frames waiting for their blobs' bytes
        self._blobs: list[bytes | bytearray] = []  # the blobs announced, allocated once
        self._views: list[memoryview] = []  # writable views of them
        self._blob = 0  # the one being filled
        self._filled = 0  # its bytes so far
        self._chunk_left = 0  # bytes of the current raw chunk not yet seen
        self._ready_frames: list[pb.Frame] = []
        self._ready_blobs: list[bytes | bytearray] = []

    def feed(self, data: bytes) -> None:
        """Bytes read from the stream."""
        self.buffer += data

    def raw_target(self) -> memoryview | None:
        """Where the next bytes of the stream belong, if they are a blob's (a view of its
        buffer, as long as the current chunk); None when they must go through ``feed``."""
        if self._chunk_left and not self.buffer:
            return self._views[self._blob][self._filled : self._filled + self._chunk_left]
        return None

    def raw_written(self, count: int) -> None:
        """``count`` bytes went straight into ``raw_target``'s view."""
        self._chunk_left -= count
        self._filled += count
        self._blob_progress()

    def take(self) -> tuple[list[pb.Frame], list[bytes | bytearray]]:
        """The frames (and their blobs' bytes) complete so far, in order."""
        buffer = self.buffer
        offset = 0
        size_of = LENGTH.size
        while True:
            if self._chunk_left:
                count = min(self._chunk_left, len(buffer) - offset)
                if not count:
                    break
                view = self._views[self._blob]
                view[self._filled : self._filled + count] = memoryview(buffer)[
                    offset : offset + count
                ]
                offset += count
                self._chunk_left -= count
                self._filled += count
                self._blob_progress()
                continue
            if len(buffer) - offset < size_of:
                break
            (word,) = LENGTH.unpack_from(buffer, offset)
            size = word & ~RAW
            if size > self._limit:
                raise ConnectionError(
                    f"the peer sent a {size}-byte message (the limit is {self._limit})"
                )
            if word & RAW:
                if self._blob >= len(self._blobs):
                    raise ConnectionError("the peer sent raw bytes no blob announced")
                need = len(self._blobs[self._blob]) - self._filled
                if not size or size > need:
                    raise ConnectionError(
                        f"the peer sent a {size}-byte raw chunk where its blob needs {need} more"
                    )
                offset += size_of
                self._chunk_left = size
                continue
            if self._blob < len(self._blobs):
                raise ConnectionError("the peer sent a batch before the bytes of its blobs")
            end = offset + size_of + size
            if len(buffer) < end:
                break
            with memoryview(buffer) as view, view[offset + size_of : end] as message:
                frames = pb.Batch.FromString(message).frames  # type: ignore[arg-type]  # in place
            # A Blob frame's tag byte must be in the message: without one, none is there.
            self._announce(frames, buffer.find(_BLOB_TAG, offset + size_of, end) >= 0)
            offset = end
        if offset:
            del buffer[:offset]
        ready = self._ready_frames, self._ready_blobs
        self._ready_frames, self._ready_blobs = [], []
        return ready

    def _announce(self, frames: Any, tagged: bool) -> None:
        if not tagged:  # the common case: no Blob frame
            self._ready_frames.extend(frames)
            return
        frames = list(frames)
        sizes = [
            frame.blob.size
            for frame in frames
            if frame.WhichOneof("kind") == "blob" and not frame.blob.data
        ]
        if not sizes:
            self._ready_frames.extend(frames)
            return
        if 0 in sizes or sum(sizes) > self.max_blob_bytes:
            raise ConnectionError(
                f"the peer announced blobs of {sum(sizes)} bytes (empty, or beyond the "
                f"limit of {self.max_blob_bytes})"
            )
        self._held = frames
        buffers = [_blob_buffer(size) for size in sizes]
        self._blobs = [blob for blob, _ in buffers]
        self._views = [view for _, view in buffers]
        self._blob = self._filled = 0

    def _blob_progress(self) -> None:
        if self._filled < len(self._blobs[self._blob]):
            return
        self._blob += 1
        self._filled = 0
        if self._blob == len(self._blobs):  # all there: the batch can go
            for view in self._views:
                view.release()
            self._ready_frames.extend(self._held)
            self._ready_blobs.extend(self._blobs)
            self._held, self._blobs, self._views, self._blob = [], [], [], 0
