"""Checks pyusdt's --exporter file output with the official protobuf JSON mapping.

Each line must parse (google.protobuf.json_format, strict: unknown fields are errors) as an
OTLP Export{Trace,Metrics,Logs}ServiceRequest; trace and span IDs must be the hex strings OTLP/JSON
uses (the one place it departs from the standard mapping, which would read them as base64).
Prints the number of requests and items per signal.
"""
import json
import re
import sys

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

HEX = {"traceId": 32, "spanId": 16, "parentSpanId": 16}


def check_ids(node, where):
    if isinstance(node, dict):
        if "spans" in node:
            for span in node["spans"]:
                assert span.get("traceId") and span.get("spanId"), f"{where}: span without IDs"
        for k, v in node.items():
            if k in HEX and v != "":
                assert re.fullmatch(f"[0-9a-f]{{{HEX[k]}}}", v), f"{where}: {k}={v!r} is not OTLP hex"
            check_ids(v, where)
    elif isinstance(node, list):
        for v in node:
            check_ids(v, where)


counts = {}
with open(sys.argv[1]) as f:
    for n, line in enumerate(f, 1):
        doc = json.loads(line)
        check_ids(doc, f"line {n}")
        if "resourceSpans" in doc:
            msg, signal = ExportTraceServiceRequest(), "traces"
        elif "resourceMetrics" in doc:
            msg, signal = ExportMetricsServiceRequest(), "metrics"
        elif "resourceLogs" in doc:
            msg, signal = ExportLogsServiceRequest(), "logs"
        else:
            sys.exit(f"line {n}: not an OTLP export request: {list(doc)}")
        json_format.Parse(line, msg)  # raises on any mapping violation
        items = {
            "traces": lambda m: sum(len(s.spans) for r in m.resource_spans for s in r.scope_spans),
            "metrics": lambda m: sum(len(s.metrics) for r in m.resource_metrics for s in r.scope_metrics),
            "logs": lambda m: sum(len(s.log_records) for r in m.resource_logs for s in r.scope_logs),
        }[signal](msg)
        assert items > 0, f"line {n}: empty {signal} request"
        requests, total = counts.get(signal, (0, 0))
        counts[signal] = (requests + 1, total + items)

for signal, (requests, items) in sorted(counts.items()):
    print(f"{signal}: {requests} requests, {items} items")
