"""OpenTelemetry: the client's spans and the proxy's are one trace, joined by the Call frame.

The proxy runs in this process (``RemoteEnclaveProxyServer`` on a Unix socket, served
from a thread), so one ``InMemorySpanExporter`` sees the spans of both ends. They share
no thread and no ambient context: the proxy's spans can only find their parents through
the trace context each ``Call`` frame carries, in both directions (the client's exit
handler's parent is the proxy's exit call span, not the client's own entry call span).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import farside
from farside import tracing
from farside.attestation.attester import KeyAttester
from farside.provision.base import ProxyLease
from farside.proxy.server import RemoteEnclaveProxyServer
from farside.trusted import runtime

from ._support import WORKER


class InProcessProvision:
    """Each enclave's proxy in this process, on a Unix socket; a fresh platform key each."""

    def __init__(self, directory: Path, transport: str) -> None:
        self._directory = directory
        self._transport = transport

    def provision(self, *, name: str, timeout: float) -> ProxyLease:
        key = Ed25519PrivateKey.generate()
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        token = secrets.token_urlsafe(16)
        server = RemoteEnclaveProxyServer(
            f"unix:{self._directory / (secrets.token_hex(4) + '.sock')}",
            token,
            attester=KeyAttester(key),
            transport=self._transport,
            idle_timeout=timeout,
        )
        address = server.start()
        thread = threading.Thread(target=server.serve, daemon=True, name="test-proxy")
        thread.start()
        return ProxyLease(
            address=address,
            token=token,
            transport=self._transport,
            platform_keys=(public,),
            handle=(server, thread),
        )

    def release(self, lease: ProxyLease) -> None:
        server, thread = lease.handle
        server.stop("released")
        thread.join(10)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, into memory; off again (and stdout/stderr as they were) afterwards."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    saved = sys.stdout, sys.stderr  # the in-process proxy's runtime takes them over
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.disable()
        sys.stdout, sys.stderr = saved
        provider.shutdown()


@pytest.fixture
def provision(transport: str) -> Iterator[InProcessProvision]:
    """A proxy in this process. Its runtime takes over what a proxy process owns: the
    environment (the enclave's is its configuration's) and the runtime slot; both are
    put back afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="farside-test-tracing-"))
    environment = dict(os.environ)
    try:
        yield InProcessProvision(directory, transport)
    finally:
        os.environ.clear()
        os.environ.update(environment)
        runtime._current = None
        shutil.rmtree(directory, ignore_errors=True)


def named(finished: tuple[ReadableSpan, ...], name: str, kind: SpanKind) -> ReadableSpan:
    [span] = [s for s in finished if s.name == name and s.kind is kind]
    return span


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def parent_id(span: ReadableSpan) -> int:
    assert span.parent is not None
    return span.parent.span_id


def test_client_and_proxy_spans_are_one_trace(
    spans: InMemorySpanExporter, provision: InProcessProvision
) -> None:
    with farside.load(WORKER, provision=provision, exit_handlers={"audit": len}) as enclave:
        spans.clear()  # initialize's span (the load makes no client span)
        assert enclave.call("call_host", "audit", "four") == 4
        finished = spans.get_finished_spans()
        entry = named(finished, "farside.Enclave/call_host", SpanKind.CLIENT)
        served = named(finished, "farside.Enclave/call_host", SpanKind.SERVER)
        exit_call = named(finished, "farside.Host/audit", SpanKind.CLIENT)
        handler = named(finished, "farside.Host/audit", SpanKind.SERVER)
        assert len(finished) == 4
        trace_ids = {s.context.trace_id for s in finished if s.context is not None}
        assert len(trace_ids) == 1
        assert entry.parent is None
        assert parent_id(served) == span_id(entry)
        assert parent_id(exit_call) == span_id(served)
        assert parent_id(handler) == span_id(exit_call)
        attributes: dict[str, Any] = dict(entry.attributes or {})
        assert attributes["rpc.system"] == "farside"
        assert attributes["rpc.service"] == "farside.Enclave"
        assert attributes["rpc.method"] == "call_host"
        assert attributes["farside.enclave"] == enclave.name
        assert dict(exit_call.attributes or {})["rpc.method"] == "audit"
        assert entry.status.status_code is not StatusCode.ERROR

        spans.clear()
        with pytest.raises(farside.EnclaveCallError):
            enclave.call("fail", "boom")
        failed = spans.get_finished_spans()
        assert {s.kind for s in failed} == {SpanKind.CLIENT, SpanKind.SERVER}
        for span in failed:
            assert span.status.status_code is StatusCode.ERROR
            assert "boom" in (span.status.description or "")
            assert dict(span.attributes or {})["rpc.farside.status_code"] != 0


def test_no_tracer_means_no_spans_and_no_trace_context(provision: InProcessProvision) -> None:
    saved = sys.stdout, sys.stderr
    try:
        assert tracing.TRACER is None
        with farside.load(WORKER, provision=provision) as enclave:
            assert enclave.call("echo", 1) == {"args": [1], "kwargs": {}}
    finally:
        sys.stdout, sys.stderr = saved


def test_a_proxy_configures_tracing_from_its_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    log = tmp_path / "proxy.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert tracing.configure_from_environment("farside-proxy", log_fd=fd) == "console"
        assert tracing.TRACER is not None
        with tracing.TRACER.server_span("farside.Enclave", "run", b""):
            pass
    finally:
        tracing.shutdown()
        os.close(fd)
    assert tracing.TRACER is None
    text = log.read_text()
    assert '"farside.Enclave/run"' in text
    assert '"service.name": "farside-proxy"' in text
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ValueError, match="console and otlp"):
        tracing.configure_from_environment("farside-proxy")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tracing.configure_from_environment("farside-proxy") is None
