"""A small OTLP/gRPC trace receiver for tests: what a collector would get from Envoy.

It implements `opentelemetry.proto.collector.trace.v1.TraceService/Export` with grpcio over
the published OpenTelemetry protos (the `opentelemetry.proto` package that xds-protos already
ships, because Envoy's API imports it: no extra dependency, and no second package writing the
same files), on loopback, and keeps every request it was sent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class OtlpReceiver:
    """`with OtlpReceiver() as otlp:` listens on 127.0.0.1:`otlp.port`; `otlp.spans()` lists
    (service.name, span) for every span received so far."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._lock = threading.Lock()
        self._requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        handler = grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Export": grpc.unary_unary_rpc_method_handler(
                    self._export,
                    request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
                    response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
                )
            },
        )
        self._server.add_generic_rpc_handlers((handler,))
        self.host = host
        self.port = self._server.add_insecure_port(f"{host}:0")
        if not self.port:
            raise RuntimeError("the OTLP receiver could not bind")

    def _export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        with self._lock:
            self._requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None).wait(5)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def requests(self) -> list[trace_service_pb2.ExportTraceServiceRequest]:
        with self._lock:
            return list(self._requests)

    def spans(self) -> list[tuple[str, trace_pb2.Span]]:
        """Every span received, with its resource's `service.name` ("" if none)."""
        return list(_spans(self.requests))


def _spans(requests: list[trace_service_pb2.ExportTraceServiceRequest]) -> Iterator[tuple[str, trace_pb2.Span]]:
    for req in requests:
        for rs in req.resource_spans:
            service = next(
                (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"),
                "",
            )
            # `scope_spans` in today's OTLP, `instrumentation_library_spans` in the older
            # release xds-protos vendors: the same field number (2) and shape on the wire.
            groups = rs.scope_spans if hasattr(rs, "scope_spans") else rs.instrumentation_library_spans
            for group in groups:
                for span in group.spans:
                    yield service, span
