"""A real OTLP/HTTP receiver on a loopback port: it decodes each ``ExportTraceServiceRequest``
with opentelemetry-proto and keeps its spans (or, as a bench's sink, only answers 200)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

SERVER, CLIENT = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT


class Received:
    """What the receiver was sent: the spans, and every resource's attributes."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.resources: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()


def value(any_value: AnyValue) -> Any:
    """An attribute's value as Python (arrays as lists)."""
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return None if kind is None else getattr(any_value, kind)


def attributes(span: Span) -> dict[str, Any]:
    return {a.key: value(a.value) for a in span.attributes}


@contextlib.contextmanager
def receiver(*, keep: bool = True) -> Iterator[tuple[str, Received]]:
    """Serve OTLP/HTTP on a free loopback port; yields its base URL (an OTEL_EXPORTER_OTLP_ENDPOINT)."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if keep:
                request = ExportTraceServiceRequest.FromString(body)
                with received.lock:
                    received.paths.append(self.path)
                    for resource_spans in request.resource_spans:
                        received.resources.append({a.key: value(a.value) for a in resource_spans.resource.attributes})
                        for scope_spans in resource_spans.scope_spans:
                            received.spans.extend(scope_spans.spans)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:  # (no line per export on stderr)
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
