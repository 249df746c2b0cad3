"""The attester inside an AWS Nitro Enclave: the Nitro Secure Module at ``/dev/nsm``.

The NSM speaks CBOR through one ioctl (aws-nitro-enclaves-nsm-api ``src/driver``;
the kernel's ``include/uapi/linux/nsm.h``): the argument is ``struct nsm_raw``, two
iovecs ``{u64 addr; u64 len}`` for the request and the response, and the request
code is ``_IOWR(0x0A, 0, struct nsm_raw)``. The kernel writes the response and sets
its length. An attestation request is the serde encoding of the API's enum,
``{"Attestation": {"user_data": b|null, "nonce": b|null, "public_key": b|null}}``;
the answer is ``{"Attestation": {"document": b}}`` or ``{"Error": "<ErrorCode>"}``.

The ioctl sits behind ``NsmTransport`` (CBOR request in, CBOR response out), so a
fake NSM can answer in tests; ``device_transport`` is the real one.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from collections.abc import Callable
from typing import Any

import cbor2

from ..._errors import AttestationError

__all__ = ["DEFAULT_NSM_DEVICE", "NSM_IOCTL_RAW", "NsmAttester", "NsmTransport", "device_transport"]

DEFAULT_NSM_DEVICE = "/dev/nsm"
# The API's limits: requests up to 0x1000 bytes, responses up to 0x3000.
_REQUEST_MAX = 0x1000
_RESPONSE_MAX = 0x3000
_USER_DATA_MAX = 512
_PUBLIC_KEY_MAX = 1024

#: A CBOR request in, the NSM's CBOR response out.
NsmTransport = Callable[[bytes], bytes]


class _Iovec(ctypes.Structure):
    _fields_ = (("addr", ctypes.c_uint64), ("len", ctypes.c_uint64))


class _NsmRaw(ctypes.Structure):
    _fields_ = (("request", _Iovec), ("response", _Iovec))


def _iowr(magic: int, number: int, size: int) -> int:
    # Linux's generic ioctl encoding (asm-generic/ioctl.h), as on x86-64 and arm64:
    # direction (read|write = 3) in bits 30-31, size in 16-29, type in 8-15, number in 0-7.
    return (3 << 30) | (size << 16) | (magic << 8) | number


#: ``_IOWR(NSM_MAGIC=0x0A, 0, struct nsm_raw)``: 0xC0200A00.
NSM_IOCTL_RAW = _iowr(0x0A, 0, ctypes.sizeof(_NsmRaw))


def device_transport(device: str | os.PathLike[str] = DEFAULT_NSM_DEVICE) -> NsmTransport:
    """The real NSM: one ioctl on ``device`` per request."""

    def call(request: bytes) -> bytes:
        if len(request) > _REQUEST_MAX:
            raise ValueError("the NSM request is too large")
        request_buffer = ctypes.create_string_buffer(request, len(request))
        response_buffer = ctypes.create_string_buffer(_RESPONSE_MAX)
        message = _NsmRaw(
            _Iovec(ctypes.addressof(request_buffer), len(request)),
            _Iovec(ctypes.addressof(response_buffer), _RESPONSE_MAX),
        )
        descriptor = os.open(device, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(descriptor, NSM_IOCTL_RAW, message, True)
        finally:
            os.close(descriptor)
        length = min(int(message.response.len), _RESPONSE_MAX)
        return response_buffer.raw[:length]

    return call


def _failure(message: str) -> AttestationError:
    return AttestationError(f"NSM: {message}", check="attester")


def _document(response: Any) -> bytes:
    if not isinstance(response, dict) or len(response) != 1:
        raise _failure("malformed response")
    if "Error" in response:
        raise _failure(f"the NSM refused the request: {str(response['Error'])[:40]}")
    body = response.get("Attestation")
    document = body.get("document") if isinstance(body, dict) else None
    if not isinstance(document, bytes) or not document:
        raise _failure("the response holds no attestation document")
    return document


class NsmAttester:
    """Evidence from the Nitro Secure Module: a COSE_Sign1 attestation document.

    ``evidence(report_data)`` puts the 64 bytes in the document's ``user_data``
    (the verifier's ``HardwareReport.report_data``); ``public_key`` (DER, optional)
    goes in ``public_key`` for clients that encrypt to the enclave. ``transport``
    replaces the device (tests). Failures raise ``AttestationError(check="attester")``.
    """

    format = "nitro"

    def __init__(
        self,
        device: str | os.PathLike[str] = DEFAULT_NSM_DEVICE,
        *,
        public_key: bytes | None = None,
        transport: NsmTransport | None = None,
    ) -> None:
        if public_key is not None and len(public_key) > _PUBLIC_KEY_MAX:
            raise ValueError(f"the NSM takes a public key of at most {_PUBLIC_KEY_MAX} bytes")
        self._public_key = public_key
        self._transport = device_transport(device) if transport is None else transport

    def evidence(self, report_data: bytes) -> bytes:
        """The raw attestation document with ``report_data`` (64 bytes) as its user_data."""
        if not isinstance(report_data, bytes) or len(report_data) != 64:
            raise ValueError("report_data is 64 bytes")
        request = cbor2.dumps(
            {
                "Attestation": {
                    "user_data": report_data,
                    "nonce": None,
                    "public_key": self._public_key,
                }
            }
        )
        try:
            raw = self._transport(request)
        except OSError as exc:
            raise _failure(f"the device did not answer: {exc}") from exc
        try:
            response = cbor2.loads(raw)
        except (cbor2.CBORError, ValueError, TypeError, RecursionError) as exc:
            raise _failure("the response is not CBOR") from exc
        return _document(response)
