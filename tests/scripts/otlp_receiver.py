"""A small OTLP/HTTP receiver for mcp-guard's telemetry suites (PEERS.md "Telemetry receiver").

Usage: python otlp_receiver.py --port PORT --out FILE

Accepts POST /v1/traces, /v1/metrics and /v1/logs, as protobuf (application/x-protobuf) or JSON
(application/json), gzip-encoded or not, parses them with PyPI opentelemetry-proto, and appends one
JSON line per export request to FILE: {"signal": "traces", "content_type": ..., "body": <the
request as OTLP JSON>}. In trace dumps every span also gets "traceIdHex", "spanIdHex" and
"parentSpanIdHex" (OTLP JSON from protobuf carries ids base64-encoded). Answers with an empty
export response, as a collector does. Prints "READY <port>" on stdout once it listens.
With --summary (the benchmark's receiver, bench/run.sh), each line holds only the signal, the
content type and, for traces, the number of spans by service name ({"spans": {"name": n}}): turning
every span into JSON costs more CPU than the sidecar spends on it, on the cores it is measured on.
Installed by tests/scripts/install-otlp.sh.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

SIGNALS = {
    "/v1/traces": (
        "traces",
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
    ),
    "/v1/metrics": (
        "metrics",
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
    "/v1/logs": (
        "logs",
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
    ),
}

LOCK = threading.Lock()


def b64_to_hex(v: str) -> str:
    try:
        return base64.b64decode(v).hex()
    except Exception:  # noqa: BLE001 - keep the dump going
        return ""


def add_hex_ids(doc: dict) -> None:
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key + "Hex"] = b64_to_hex(span[key])


def span_counts(msg) -> dict:
    """Spans by service name in an export (empty for metrics and logs)."""
    counts: dict = {}
    for rs in getattr(msg, "resource_spans", []):
        service = next(
            (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "?"
        )
        counts[service] = counts.get(service, 0) + sum(len(ss.spans) for ss in rs.scope_spans)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--summary", action="store_true", help="write span counts, not the exports")
    args = ap.parse_args()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *a: object) -> None:  # quiet
            pass

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            sig = SIGNALS.get(path)
            if sig is None:
                self.send_response(404)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            name, req_type, resp_type = sig
            if (self.headers.get("content-encoding") or "").lower() == "gzip":
                raw = gzip.decompress(raw)
            ctype = (self.headers.get("content-type") or "").split(";")[0].strip().lower()
            msg = req_type()
            try:
                if ctype == "application/json":
                    json_format.Parse(raw.decode("utf-8"), msg)
                else:
                    msg.ParseFromString(raw)
            except Exception as e:  # noqa: BLE001
                body = str(e).encode()
                self.send_response(400)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            if args.summary:
                line = json.dumps({"signal": name, "content_type": ctype, "spans": span_counts(msg)})
            else:
                doc = json_format.MessageToDict(msg)
                if name == "traces":
                    add_hex_ids(doc)
                line = json.dumps({"signal": name, "content_type": ctype, "body": doc})
            with LOCK, open(args.out, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            if ctype == "application/json":
                out = json_format.MessageToJson(resp_type()).encode()
            else:
                out = resp_type().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", ctype or "application/x-protobuf")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"READY {args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
