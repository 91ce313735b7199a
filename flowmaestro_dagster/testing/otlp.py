"""An in-process OTLP trace receiver: what an OpenTelemetry Collector would get, decoded.

Both transports on loopback ports, as a context manager::

    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint}  # or grpc_endpoint
        ...
        spans = receiver.wait_for_spans(lambda spans: len(spans) >= 5)

OTLP/HTTP: `POST /v1/traces` with an `ExportTraceServiceRequest` protobuf body (gzip or not);
OTLP/gRPC: the `TraceService/Export` call. Every span received is kept as a `ReceivedSpan`
(ids as hex, attributes as plain Python values) with its resource's attributes.
"""

import gzip
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, Self

import grpc  # type: ignore[import-untyped]  # grpcio ships no stubs
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from flowmaestro_dagster.testing.local_server import LocalHTTPServer


@dataclass(frozen=True)
class ReceivedLink:
    trace_id: str
    span_id: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it (times in nanoseconds since the epoch)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    start: int
    end: int
    attributes: Mapping[str, Any]
    status_code: str  # UNSET | OK | ERROR
    status_message: str
    links: Sequence[ReceivedLink] = ()
    resource: Mapping[str, Any] = field(default_factory=dict)
    transport: str = "http"  # http | grpc


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def _attributes(values: Sequence[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in values}


def decode(
    request: trace_service_pb2.ExportTraceServiceRequest, transport: str
) -> list[ReceivedSpan]:
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        start=span.start_time_unix_nano,
                        end=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        status_code=("UNSET", "OK", "ERROR")[span.status.code],
                        status_message=span.status.message,
                        links=[
                            ReceivedLink(
                                link.trace_id.hex(),
                                link.span_id.hex(),
                                _attributes(link.attributes),
                            )
                            for link in span.links
                        ],
                        resource=resource,
                        transport=transport,
                    )
                )
    return spans


class _HttpHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        owner: OtlpReceiver = self.server.owner.owner  # type: ignore[attr-defined]
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        owner.receive(decode(request, "http"), dict(self.headers.items()))
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        return


class _HttpReceiver(LocalHTTPServer):
    handler = _HttpHandler
    name = "OTLP/HTTP receiver"

    def __init__(self, owner: "OtlpReceiver") -> None:
        super().__init__()
        self.owner = owner


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, owner: "OtlpReceiver") -> None:
        self.owner = owner

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        headers = {key: str(value) for key, value in context.invocation_metadata()}
        self.owner.receive(decode(request, "grpc"), headers)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Receives OTLP traces over HTTP (`http_endpoint`) and gRPC (`grpc_endpoint`)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        self.requests: list[Mapping[str, str]] = []  # each export's headers (lower case keys)
        self._http = _HttpReceiver(self)
        self._grpc: grpc.Server | None = None
        self._grpc_port = 0

    def receive(self, spans: Sequence[ReceivedSpan], headers: Mapping[str, str]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests.append({k.lower(): v for k, v in headers.items()})
            self._lock.notify_all()

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()
            self.requests.clear()

    def wait_for_spans(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0
    ) -> list[ReceivedSpan]:
        """The spans received once `predicate` holds for them (AssertionError after timeout)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(list(self._spans)):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = sorted(s.name for s in self._spans)
                    raise AssertionError(f"the receiver did not get the spans; it has {names}")
                self._lock.wait(min(left, 0.5))
            return list(self._spans)

    @property
    def http_endpoint(self) -> str:
        """`OTEL_EXPORTER_OTLP_ENDPOINT` for `http/protobuf` (the exporter adds /v1/traces)."""
        return f"http://127.0.0.1:{self._http.port}"

    @property
    def grpc_endpoint(self) -> str:
        """`OTEL_EXPORTER_OTLP_ENDPOINT` for `grpc` (plaintext: the `http` scheme)."""
        if self._grpc is None:
            raise RuntimeError("the OTLP receiver is not running (use it as a context manager)")
        return f"http://127.0.0.1:{self._grpc_port}"

    def start(self) -> Self:
        self._http.start()
        if self._grpc is None:
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), server)
            self._grpc_port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            self._grpc = server
        return self

    def close(self) -> None:
        self._http.close()
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["OtlpReceiver", "ReceivedLink", "ReceivedSpan", "decode"]
