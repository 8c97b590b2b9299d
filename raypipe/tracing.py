"""Traces: one trace from ``POST /v1/jobs`` through the claim and the attempt to the
processor's own spans and its outbound requests, when OpenTelemetry is configured.

Configured means the standard variables ask for an exporter (``OTEL_TRACES_EXPORTER``
other than ``none``, or an ``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``); then each process
sets up OpenTelemetry's SDK on first use, exporting through OTLP over HTTP (the
``raypipe[otel]`` extra) or to the console. Otherwise nothing here imports OpenTelemetry
and every function is a no-op. A job keeps its submission's context as a W3C
``traceparent`` (``jobs.trace_parent``), which is how the trace crosses processes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

TRACER = "raypipe"
#: Span kinds by name, as OpenTelemetry spells them.
SERVER, INTERNAL, CLIENT = "SERVER", "INTERNAL", "CLIENT"


def configured() -> bool:
    """Whether the environment asks for traces (read once per process)."""
    return _tracer() is not None


@functools.cache
def _tracer() -> Any:
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if exporter == "none" or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    if not exporter and not endpoint:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        if exporter == "console":
            span_exporter: Any = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            span_exporter = OTLPSpanExporter()
    except ImportError as exc:
        log.warning("traces asked for, but %s: pip install 'raypipe[otel]'", exc)
        return None
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        service = os.environ.get("OTEL_SERVICE_NAME", TRACER)
        provider = TracerProvider(
            resource=Resource.create({"service.name": service, "process.pid": os.getpid()})
        )
        provider.add_span_processor(BatchSpanProcessor(span_exporter))
        trace.set_tracer_provider(provider)
    return trace.get_tracer(TRACER)


@contextlib.contextmanager
def span(
    name: str,
    *,
    parent: str | None = None,
    kind: str = INTERNAL,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """A span around the block, the child of ``parent`` (a ``traceparent``) when given,
    else of the current span; yields it (None when traces are off). An exception that
    leaves the block is recorded on it."""
    tracer = _tracer()
    if tracer is None:
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    context = TraceContextTextMapPropagator().extract({"traceparent": parent}) if parent else None
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=getattr(trace.SpanKind, kind),
        attributes=dict(attributes or {}),
    ) as current:
        yield current


def attributes(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A job's log fields (:func:`raypipe.job_logs.job_fields`) as span attributes:
    ``raypipe.job_id``, ``raypipe.attempt``, …"""
    return {f"raypipe.{name.removeprefix('raypipe_')}": value for name, value in fields.items()}


def current_parent() -> str | None:
    """The current span's context as a ``traceparent``, or None (no span, traces off)."""
    if _tracer() is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def trace_id(parent: str | None) -> str | None:
    """The trace id in a ``traceparent`` (``00-<trace id>-<span id>-<flags>``)."""
    if not parent:
        return None
    parts = parent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


@contextlib.contextmanager
def outgoing(method: str, url: str) -> Iterator[dict[str, str]]:
    """A client span around an outbound request made inside a trace; yields the headers
    that carry the trace to the server (none outside a trace, or with traces off)."""
    if current_parent() is None:
        yield {}
        return
    with span(
        f"{method} {url.split('?', 1)[0]}",
        kind=CLIENT,
        attributes={"http.request.method": method, "url.full": url.split("?", 1)[0]},
    ):
        headers = {"traceparent": current_parent() or ""}
        yield headers
