"""What a client can make a provision server do, and see (issue 14, finding 6).

The review found unauthenticated clients keyed by IP *and port*, so `--max-per-client 1`
let one client open four enclaves over four channels; and `ListEnclaves` showing every
client's enclaves (identity, name, measurement, address, PID) to any caller.
"""

from __future__ import annotations

import grpc
import pytest

import farside
from farside._proto.v1 import provision_pb2 as pb, provision_pb2_grpc as pb_grpc

from ._provision import PKI, ServerFactory, pki, servers

__all__ = ["pki", "servers"]


def test_an_unauthenticated_client_is_one_address_whatever_its_ports(
    servers: ServerFactory,
) -> None:
    server = servers(tls=None, max_per_client=1, max_enclaves=4)
    channels = [grpc.insecure_channel(server.address) for _ in range(4)]
    try:
        stubs = [pb_grpc.ProvisionerStub(c) for c in channels]
        first = stubs[0].Provision(pb.ProvisionRequest(name="one"), timeout=20)
        for number, stub in enumerate(stubs[1:], start=2):
            with pytest.raises(grpc.RpcError) as refused:
                stub.Provision(pb.ProvisionRequest(name=f"n{number}"), timeout=20)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "maximum per client" in (refused.value.details() or "")
        reply = stubs[3].ListEnclaves(pb.ListEnclavesRequest(), timeout=10)
        assert reply.caller == "peer:ipv4:127.0.0.1"
        assert [e.enclave_id for e in reply.enclaves] == [first.enclave_id]
        stubs[0].Release(pb.ReleaseRequest(enclave_id=first.enclave_id), timeout=10)
    finally:
        for channel in channels:
            channel.close()


def test_each_caller_sees_its_own_enclaves_and_an_operator_sees_all(
    servers: ServerFactory,
) -> None:
    pki: PKI = servers.pki
    both = pki.main.ca.read_bytes() + pki.second.ca.read_bytes()
    server = servers(
        tls=farside.TLSConfig(cert=pki.main.server_cert, key=pki.main.server_key, client_ca=both),
        operators=("cert:second-client",),
        max_enclaves=4,
    )
    second_tls = farside.TLSConfig(
        ca=pki.main.ca, cert=pki.second.client_cert, key=pki.second.client_key
    )
    mine = servers.load(servers.remote(server))
    mine_view = servers.stub(server).ListEnclaves(pb.ListEnclavesRequest(), timeout=10)
    assert (mine_view.caller, mine_view.operator) == ("cert:farside-client", False)
    assert [e.name for e in mine_view.enclaves] == [mine.name]
    assert mine_view.hosts  # capacity is for everyone to see

    operator_view = servers.stub(server, second_tls).ListEnclaves(
        pb.ListEnclavesRequest(), timeout=10
    )
    assert (operator_view.caller, operator_view.operator) == ("cert:second-client", True)
    assert [e.name for e in operator_view.enclaves] == [mine.name]

    farside.EnclaveManager.instance().destroy_enclave(mine)


def test_a_token_caller_sees_only_what_its_token_started(servers: ServerFactory) -> None:
    pki: PKI = servers.pki
    server = servers(tls=pki.main.server_tls(mutual=False), token="t" * 32, max_enclaves=4)
    stub = servers.stub(server, pki.main.client_tls(mutual=False))
    metadata = (("authorization", "Bearer " + "t" * 32),)
    started = stub.Provision(pb.ProvisionRequest(name="mine"), timeout=20, metadata=metadata)
    reply = stub.ListEnclaves(pb.ListEnclavesRequest(), timeout=10, metadata=metadata)
    assert reply.caller.startswith("token:")
    assert [e.enclave_id for e in reply.enclaves] == [started.enclave_id]
    assert server.list_enclaves("cert:somebody-else") == []
    stub.Release(pb.ReleaseRequest(enclave_id=started.enclave_id), timeout=10, metadata=metadata)
