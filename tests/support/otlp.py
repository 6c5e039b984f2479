"""A real OTLP/HTTP receiver for tests: a Starlette app on a loopback port decoding the traces and metrics POSTed."""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.serving import serving

KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass
class Span:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: int
    resource: dict[str, Any]


@dataclass
class Point:
    """One data point of an exported metric: a sum's value, or a histogram's count and sum."""

    metric: str
    unit: str
    attributes: dict[str, Any]
    value: float
    count: int = 0


@dataclass
class Receiver:
    url: str
    spans: list[Span] = field(default_factory=list)
    metric_exports: list[list[Point]] = field(default_factory=list)  # one list per export request
    payloads: list[bytes] = field(default_factory=list)  # every decompressed body received, traces and metrics
    _arrived: anyio.Event = field(default_factory=anyio.Event)

    async def wait_for(self, count: int, timeout: float = 20) -> list[Span]:
        """At least `count` spans (all received so far)."""
        with anyio.fail_after(timeout):
            while len(self.spans) < count:
                await self._arrived.wait()
                self._arrived = anyio.Event()
        return list(self.spans)

    async def _export_metrics(self, request: Request) -> Response:
        message = ExportMetricsServiceRequest()
        message.ParseFromString(await _body(request))
        points: list[Point] = []
        for resource_metrics in message.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    for p in getattr(metric, kind).data_points:
                        attributes = {a.key: _value(a.value) for a in p.attributes}
                        if kind == "histogram":
                            points.append(Point(metric.name, metric.unit, attributes, p.sum, p.count))
                        else:
                            points.append(Point(metric.name, metric.unit, attributes, p.as_int or p.as_double))
        self.metric_exports.append(points)
        return Response(ExportMetricsServiceResponse().SerializeToString(), media_type="application/x-protobuf")

    async def _export(self, request: Request) -> Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await _body(request))
        for resource_spans in message.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Span(
                            name=span.name,
                            kind=KINDS.get(span.kind, str(span.kind)),
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status_code=span.status.code,
                            resource=resource,
                        )
                    )
        self._arrived.set()
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf")


async def _body(request: Request) -> bytes:
    body = await request.body()
    body = gzip.decompress(body) if request.headers.get("content-encoding") == "gzip" else body
    request.app.state.receiver.payloads.append(body)
    return body


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@contextlib.asynccontextmanager
async def otlp_receiver() -> AsyncIterator[Receiver]:
    """Serve POST /v1/traces on a free loopback port; yields the receiver (its `url` is the OTLP base URL)."""
    receiver = Receiver("")
    app = Starlette(
        routes=[
            Route("/v1/traces", receiver._export, methods=["POST"]),
            Route("/v1/metrics", receiver._export_metrics, methods=["POST"]),
        ]
    )
    app.state.receiver = receiver
    async with serving(app) as url:
        receiver.url = url
        yield receiver
