"""OpenTelemetry spans for entry and exit calls, joined across the session.

An application opts in with ``farside.tracing.enable()`` (its own ``TracerProvider``,
or the global one). Each entry call then gets a ``CLIENT`` span on the application's
side, whose context travels in the ``Call`` frame (``trace``, W3C ``traceparent`` and
``tracestate``); a proxy with tracing configured opens its ``SERVER`` span as that
span's child, the enclave's exit calls get ``CLIENT`` spans inside it, and the
application's exit handlers ``SERVER`` spans inside those: one trace from the
application's call down to the enclave's work and back. Attributes follow the RPC
semantic conventions: ``rpc.system="farside"``, ``rpc.service`` (``farside.Enclave``
for entry calls, ``farside.Host`` for exit calls), ``rpc.method``, and an error status
with ``rpc.farside.status_code`` when the call failed.

A proxy (``farside proxy``) configures its own tracing from the environment it was
started with: ``OTEL_TRACES_EXPORTER=console`` (to its log) or ``otlp`` (the
``opentelemetry-exporter-otlp`` package, configured by the usual ``OTEL_EXPORTER_OTLP_*``
variables; a sandboxed proxy must be allowed to reach the collector). Nothing is
imported from OpenTelemetry until tracing is enabled or configured, and until then a
call pays one ``None`` check (``TRACER``).

The trace context a peer sends is untrusted: at most ``MAX_CARRIER`` bytes, only the
two W3C fields, printable ASCII; anything else is ignored, never an error.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "MAX_CARRIER",
    "TRACER",
    "CallTracer",
    "configure_from_environment",
    "decode_carrier",
    "disable",
    "enable",
    "encode_carrier",
    "shutdown",
]

MAX_CARRIER = 1024
"""The most bytes of trace context a ``Call`` frame carries (more is dropped unread)."""
_FIELDS = ("traceparent", "tracestate")
_VALUE = re.compile(r"[\x20-\x7e]{1,512}")
ENTRY_SERVICE = "farside.Enclave"
EXIT_SERVICE = "farside.Host"


def encode_carrier(fields: Mapping[str, str]) -> bytes:
    """The W3C fields of a propagator's carrier, as the ``Call`` frame's ``trace`` bytes."""
    text = "\n".join(f"{k}={fields[k]}" for k in _FIELDS if k in fields)
    data = text.encode("ascii", "replace")
    return data if len(data) <= MAX_CARRIER else b""


def decode_carrier(data: bytes) -> dict[str, str]:
    """A peer's ``trace`` bytes as a carrier; only well-formed W3C fields survive."""
    if not data or len(data) > MAX_CARRIER:
        return {}
    fields: dict[str, str] = {}
    for line in data.decode("ascii", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key in _FIELDS and key not in fields and _VALUE.fullmatch(value):
            fields[key] = value
    return fields


class CallTracer:
    """Spans for farside's calls through one OpenTelemetry tracer (see the module docstring)."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._tracer = tracer
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()

    @contextlib.contextmanager
    def client_span(
        self, service: str, method: str, attributes: Mapping[str, Any] | None = None
    ) -> Iterator[bytes]:
        """A ``CLIENT`` span around a call this side makes; yields the context to send."""
        with self._span(service, method, self._trace.SpanKind.CLIENT, None, attributes):
            carrier: dict[str, str] = {}
            self._propagator.inject(carrier)
            yield encode_carrier(carrier)

    @contextlib.contextmanager
    def server_span(
        self,
        service: str,
        method: str,
        trace: bytes,
        attributes: Mapping[str, Any] | None = None,
    ) -> Iterator[None]:
        """A ``SERVER`` span around a call the peer made, child of the context it sent."""
        carrier = decode_carrier(trace)
        parent = self._propagator.extract(carrier) if carrier else None
        with self._span(service, method, self._trace.SpanKind.SERVER, parent, attributes):
            yield

    @contextlib.contextmanager
    def _span(
        self,
        service: str,
        method: str,
        kind: Any,
        parent: Any,
        attributes: Mapping[str, Any] | None,
    ) -> Iterator[None]:
        span_attributes = {"rpc.system": "farside", "rpc.service": service, "rpc.method": method}
        if attributes:
            span_attributes.update(attributes)
        with self._tracer.start_as_current_span(
            f"{service}/{method}",
            context=parent,
            kind=kind,
            attributes=span_attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except BaseException as exc:
                code = getattr(exc, "code", None)
                span.set_attribute("rpc.farside.status_code", int(code) if code else 2)
                span.set_status(
                    self._trace.Status(
                        self._trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:512]
                    )
                )
                raise


TRACER: CallTracer | None = None
"""The calls' tracer while tracing is on; None (the default) costs a call nothing else."""
_provider: Any = None  # a provider configure_from_environment made, shut down by shutdown()
_stream: Any = None  # the console exporter's copy of the log descriptor, closed by shutdown()
_lock = threading.Lock()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("farside")
    except PackageNotFoundError:
        return "0"


def enable(tracer_provider: Any = None) -> None:
    """Trace farside's calls with ``tracer_provider`` (the global one by default)."""
    global TRACER  # noqa: PLW0603 (one switch per process)
    from opentelemetry import trace

    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    with _lock:
        TRACER = CallTracer(provider.get_tracer("farside", _version()))


def disable() -> None:
    """Stop tracing farside's calls."""
    global TRACER  # noqa: PLW0603
    with _lock:
        TRACER = None


def configure_from_environment(service_name: str, *, log_fd: int = 2) -> str | None:
    """Configure tracing from ``OTEL_TRACES_EXPORTER`` (a proxy does at start); say how.

    ``console`` writes spans as JSON to ``log_fd`` (the process's log), ``otlp`` sends
    them with the OTLP exporter (gRPC, or HTTP when ``OTEL_EXPORTER_OTLP_PROTOCOL`` says
    ``http/protobuf``); unset or ``none`` configures nothing and returns None.
    ``ValueError`` for another value, ``ImportError`` (naming the package) when the
    OpenTelemetry SDK or exporter is missing.
    """
    global _provider, _stream  # noqa: PLW0603
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter_name in ("", "none"):
        return None
    if exporter_name not in ("console", "otlp"):
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter_name!r}: farside knows console and otlp")
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError:
        raise ImportError(
            "tracing needs the OpenTelemetry SDK: pip install 'farside[tracing]' opentelemetry-sdk"
        ) from None
    exporter: Any
    if exporter_name == "console":
        _stream = os.fdopen(os.dup(log_fd), "w", encoding="utf-8")
        exporter = ConsoleSpanExporter(
            out=_stream,
            formatter=lambda span: span.to_json(indent=None) + "\n",
        )
    else:
        http = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc").startswith("http")
        try:
            if http:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            else:
                from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                    OTLPSpanExporter,
                )
        except ImportError:
            raise ImportError(
                "OTEL_TRACES_EXPORTER=otlp needs pip install opentelemetry-exporter-otlp"
            ) from None
        exporter = OTLPSpanExporter()
    service = os.environ.get("OTEL_SERVICE_NAME") or service_name
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _provider = provider
    enable(provider)
    return exporter_name


def shutdown() -> None:
    """Flush and stop what ``configure_from_environment`` started (a proxy, before it exits)."""
    global _provider, _stream
    provider, _provider = _provider, None
    stream, _stream = _stream, None
    disable()
    if provider is not None:
        with contextlib.suppress(Exception):
            provider.shutdown()
    if stream is not None:
        with contextlib.suppress(OSError):
            stream.close()
