"""Fuzzing the provision server's requests: every answer is a status, the server keeps serving.

One in-process ``ProvisionServer`` (mTLS, the module's PKI) takes hypothesis-generated
requests: raw bytes for each method (through a channel with no serializers), well-typed
requests through the stub, bearer tokens on a second server that wants one. Every answer
must be OK or a refusal with a meaningful status (never UNKNOWN or INTERNAL, never a Python
traceback); a request that happens to provision a proxy has it released, so no proxy is
left; and afterwards the server still answers its health check and provisions an enclave
that loads.

tests/integration/test_provision_server.py has the hand-made bad requests; this module
generates them.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, example, given, settings, strategies as st
from integration._provision import PKI, ServerFactory, pki
from integration._support import wait_until

from farside._proto.v1 import provision_pb2 as pb, provision_pb2_grpc as pb_grpc
from farside.provision.server import MAX_REQUEST_BYTES, SERVICE_NAME, ProvisionServer

__all__ = ["pki"]  # the fixture this module uses

TOKEN = "fuzzing-token-0123456789-abcdefghijklmnop"
NAME = re.compile(r"[A-Za-z0-9._\-]{1,128}")  # what the server accepts as an enclave name
ENCLAVE_ID = re.compile(r"[0-9a-f]{16}")
REQUESTS: dict[str, type[Message]] = {
    "Provision": pb.ProvisionRequest,
    "Release": pb.ReleaseRequest,
    "ListEnclaves": pb.ListEnclavesRequest,
}
RESPONSES: dict[str, type[Message]] = {
    "Provision": pb.ProvisionResponse,
    "Release": pb.ReleaseResponse,
    "ListEnclaves": pb.ListEnclavesResponse,
}
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
}
SCALE = float(os.environ.get("FARSIDE_FUZZ_SCALE", "1"))  # as in test_fuzz_session
EXAMPLES = settings(
    deadline=None,
    max_examples=max(1, int(60 * SCALE)),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@dataclass
class Env:
    """The module's servers and the ways to reach them."""

    factory: ServerFactory
    server: ProvisionServer  # mTLS
    stub: pb_grpc.ProvisionerStub
    raw: dict[str, Callable[..., bytes]]  # method name -> bytes in, bytes out
    token_server: ProvisionServer  # TLS and a bearer token
    token_stub: pb_grpc.ProvisionerStub
    health: health_pb2_grpc.HealthStub
    provisioned: int = 0

    def release(self, enclave_id: str) -> None:
        self.stub.Release(pb.ReleaseRequest(enclave_id=enclave_id), timeout=10)


@pytest.fixture(scope="module")
def env(pki: PKI) -> Iterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="farside-fuzz-provision-"))
    factory = ServerFactory(pki, root)
    try:
        server = factory()
        channel = factory.channel(server)
        token_server = factory(token=TOKEN, tls=pki.main.server_tls(mutual=False))
        yield Env(
            factory=factory,
            server=server,
            stub=pb_grpc.ProvisionerStub(channel),
            raw={
                method: channel.unary_unary(
                    f"/{SERVICE_NAME}/{method}",
                    request_serializer=None,
                    response_deserializer=None,
                )
                for method in REQUESTS
            },
            token_server=token_server,
            token_stub=factory.stub(token_server, pki.main.client_tls(mutual=False)),
            health=health_pb2_grpc.HealthStub(channel),
        )
    finally:
        try:
            factory.close()  # fails the module if a proxy outlived its server
        finally:
            shutil.rmtree(root, ignore_errors=True)


def answer(call: Callable[..., Any], request: Any, **kwargs: Any) -> tuple[grpc.StatusCode, Any]:
    """Call; return (status, response or None). Only OK and refusals are acceptable."""
    try:
        response = call(request, timeout=10, **kwargs)
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        assert code in REFUSALS, f"answered {code}: {details}"
        assert "Traceback" not in details, details
        assert "Exception" not in details, details
        return code, None
    return grpc.StatusCode.OK, response


def expected_status(method: str, request: Message | None) -> set[grpc.StatusCode]:
    """What the server must answer to ``request`` (None: bytes that do not parse)."""
    if request is None:
        return {grpc.StatusCode.INVALID_ARGUMENT}
    if isinstance(request, pb.ProvisionRequest):
        if NAME.fullmatch(request.name):
            return {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        return {grpc.StatusCode.INVALID_ARGUMENT}
    if isinstance(request, pb.ReleaseRequest):
        if ENCLAVE_ID.fullmatch(request.enclave_id):
            return {grpc.StatusCode.OK}  # unknown ids are fine: Release is idempotent
        return {grpc.StatusCode.INVALID_ARGUMENT}
    return {grpc.StatusCode.OK}


def check_response(env: Env, method: str, response: Any) -> None:
    """An OK answer parses; a proxy it provisioned is released at once."""
    if isinstance(response, bytes):
        response = RESPONSES[method].FromString(response)
    if isinstance(response, pb.ProvisionResponse):
        assert ENCLAVE_ID.fullmatch(response.enclave_id)
        assert response.session_token
        assert response.proxy_certificate
        env.provisioned += 1
        env.release(response.enclave_id)


@pytest.fixture
def nothing_left(env: Env) -> Iterator[None]:
    """After each test: no proxy left running, the server healthy."""
    yield
    assert wait_until(lambda: env.server.enclave_count() == 0, 10), env.server.list_enclaves()
    assert env.token_server.enclave_count() == 0
    check = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    status = env.health.Check(check, timeout=5).status
    assert status == health_pb2.HealthCheckResponse.SERVING


# ----------------------------------------------------------------- strategies

text = st.text(st.characters(codec="utf-8"), max_size=140)
bad_names = st.one_of(
    text,
    st.sampled_from(["", "a b", "a/b", "../x", "é", "x" * 129, "name\n", "\x00", "a" * 1000]),
).filter(lambda name: not NAME.fullmatch(name))
enclave_ids = st.one_of(
    text,
    st.text("0123456789abcdefABCDEF", min_size=15, max_size=17),
    st.sampled_from(["0" * 16, "0123456789abcdef", "0123456789ABCDEF", " " + "a" * 16]),
)


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with bytes flipped, cut out or inserted (an empty result is fine)."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        if not out:
            out += draw(st.binary(min_size=1, max_size=4))
            continue
        at = draw(st.integers(0, len(out) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            out[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del out[at : at + draw(st.integers(1, 4))]
        else:
            out[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(out)


def _serialized(method: str) -> st.SearchStrategy[bytes]:
    if method == "Provision":
        messages = st.builds(pb.ProvisionRequest, name=bad_names)
    elif method == "Release":
        messages = st.builds(pb.ReleaseRequest, enclave_id=enclave_ids)
    else:
        messages = st.just(pb.ListEnclavesRequest())
    return messages.map(lambda m: m.SerializeToString())


def request_bytes(method: str) -> st.SearchStrategy[bytes]:
    """Random bytes, real requests damaged, real requests with other fields appended."""
    real = _serialized(method)
    return st.one_of(
        st.binary(max_size=200),
        real.flatmap(damaged),
        st.tuples(real, st.binary(max_size=40)).map(lambda t: t[0] + t[1]),
    )


methods_and_bytes = st.sampled_from(list(REQUESTS)).flatmap(
    lambda method: st.tuples(st.just(method), request_bytes(method))
)


def parse(method: str, data: bytes) -> Message | None:
    try:
        return REQUESTS[method].FromString(data)
    except DecodeError:
        return None


# ----------------------------------------------------------------- tests


@settings(EXAMPLES, max_examples=max(1, int(150 * SCALE)))
@example(case=("Provision", b"\xff"))
@example(case=("Release", b"\n\x10" + b"0123456789abcdef"))
@example(case=("Provision", b"\n\x01!" + b"\x12\x00"))
@given(case=methods_and_bytes)
def test_raw_bytes_to_each_method_get_a_status(
    env: Env, nothing_left: None, case: tuple[str, bytes]
) -> None:
    method, data = case
    request = parse(method, data)
    code, response = answer(env.raw[method], data)
    assert code in expected_status(method, request), (request, code)
    if code is grpc.StatusCode.OK:
        check_response(env, method, response)


def test_list_enclaves_refuses_a_request_that_does_not_parse(env: Env) -> None:
    code, _ = answer(env.raw["ListEnclaves"], b"\xff\xff")
    assert code is grpc.StatusCode.INVALID_ARGUMENT


@EXAMPLES
@example(request=pb.ProvisionRequest(name="x" * 129))
@example(request=pb.ProvisionRequest(name="x" * 128))  # the longest valid name: provisions
@example(request=pb.ReleaseRequest(enclave_id="0123456789ABCDEF"))
@given(
    request=st.one_of(
        st.builds(pb.ProvisionRequest, name=bad_names),
        st.builds(pb.ReleaseRequest, enclave_id=enclave_ids),
        st.just(pb.ListEnclavesRequest()),
    )
)
def test_well_typed_requests_get_a_status(env: Env, nothing_left: None, request: Message) -> None:
    method = {
        pb.ProvisionRequest: "Provision",
        pb.ReleaseRequest: "Release",
        pb.ListEnclavesRequest: "ListEnclaves",
    }[type(request)]
    code, response = answer(getattr(env.stub, method), request)
    assert code in expected_status(method, request), (request, code)
    if code is grpc.StatusCode.OK:
        check_response(env, method, response)


printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=60)


@EXAMPLES
@example(header=f"Bearer {TOKEN}")
@example(header=f"bearer {TOKEN}")
@example(header=f"Bearer {TOKEN}x")
@example(header=f"Bearer {TOKEN[:-1]}")
@example(header="Bearer ")
@example(header=None)
@given(
    header=st.one_of(
        st.none(),
        printable,
        printable.map(lambda t: f"Bearer {t}"),
        st.builds(lambda a, b: f"Bearer {TOKEN[:a]}{b}", st.integers(0, len(TOKEN)), printable),
    )
)
def test_bearer_tokens_are_checked(env: Env, nothing_left: None, header: str | None) -> None:
    metadata = () if header is None else (("authorization", header),)
    code, _ = answer(env.token_stub.ListEnclaves, pb.ListEnclavesRequest(), metadata=metadata)
    good = header == f"Bearer {TOKEN}"
    assert code is (grpc.StatusCode.OK if good else grpc.StatusCode.PERMISSION_DENIED), header


@pytest.mark.parametrize("method", list(REQUESTS))
def test_requests_over_the_size_limit_are_resource_exhausted(
    env: Env, nothing_left: None, method: str
) -> None:
    code, _ = answer(env.raw[method], b"\n" * (MAX_REQUEST_BYTES + 1))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_server_still_serves_after_the_fuzzing(env: Env, nothing_left: None) -> None:
    response = env.stub.Provision(pb.ProvisionRequest(name="after-fuzzing"), timeout=20)
    assert env.server.enclave_count() == 1
    env.release(response.enclave_id)
    assert wait_until(lambda: env.server.enclave_count() == 0, 10)
    env.factory.assert_serves(env.server)  # a whole enclave session, loaded and called
