"""A trace collector for the tests: an OTLP/HTTP receiver on this machine that keeps the
spans every process exports to it in memory (the collector a deployment would run is
outside raypipe); it also serves a small file for processors to fetch and takes webhooks,
noting the ``traceparent`` each request carried."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.helpers.local_http import QuietHandler

#: What ``GET /file`` answers.
FILE = b"traced bytes"


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]


def _value(any_value: Any) -> Any:
    field = any_value.WhichOneof("value")
    return getattr(any_value, field) if field else None


class Collector:
    """Spans received so far, and the ``traceparent`` headers ``GET /file`` and the
    webhooks (``POST /hook``) were sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.fetches: list[str | None] = []
        self.hooks: list[str | None] = []
        self._lock = threading.Lock()

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        Span(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            resource=resource,
                        )
                    )
        with self._lock:
            self.spans.extend(spans)

    def of_trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]


@contextmanager
def collector() -> Iterator[tuple[Collector, int]]:
    """A running collector and its port: OTLP/HTTP at ``/v1/traces``, a file at ``/file``,
    webhooks at ``/hook``."""
    found = Collector()

    class Handler(QuietHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path == "/hook":
                found.hooks.append(self.headers.get("traceparent"))
                self.send_response(204)
                self.end_headers()
                return
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            found.take(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def do_GET(self) -> None:
            found.fetches.append(self.headers.get("traceparent"))
            self.send_response(200)
            self.send_header("content-length", str(len(FILE)))
            self.end_headers()
            self.wfile.write(FILE)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
