"""Check what fanout sends to an OpenTelemetry collector, parsed by the official protobuf
definitions (the `opentelemetry-proto` package), not by fanout's own code.

Usage: otlp_check.py FANOUT_BINARY

Starts an OTLP/HTTP receiver on loopback, runs the quickstart example live against the
simulator with OTEL_EXPORTER_OTLP_ENDPOINT pointing at it (default protocol: http/protobuf),
parses every request as an ExportTraceServiceRequest and checks the trace against
`fanout show --json`: one trace, one root, an invoke_agent span per attempt under it, chat and
execute_tool spans under their agents, the GenAI attributes, and token totals that agree with
the store. Prints PASS/FAIL per check and exits non-zero on any failure.
"""

import http.server
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

BIN = str(Path(sys.argv[1]).resolve())
REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = REPO_ROOT / "examples" / "quickstart"
received = []


class Collector(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - the http.server API
        body = self.rfile.read(int(self.headers["content-length"]))
        received.append((self.path, self.headers.get("content-type"), body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def value_of(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(item):
    return {kv.key: value_of(kv.value) for kv in item.attributes}


def main():
    results = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    work = Path(tempfile.mkdtemp(prefix="fanout-otlp-"))
    try:
        repo = work / "shop-api"
        shutil.copytree(EXAMPLE / "repo", repo)
        for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                     ["-c", "user.name=t", "-c", "user.email=t@example.invalid",
                      "commit", "-q", "-m", "initial"]):
            subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
        env = {"PATH": "/usr/bin:/bin",
               "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}",
               "HOME": str(work)}
        run = subprocess.run(
            [BIN, "run", str(EXAMPLE / "workflow.yaml"), "--repo", str(repo), "--sim",
             "--scenario", str(EXAMPLE / "scenario.yaml")],
            capture_output=True, text=True, env=env, cwd=str(work),
        )
        shown = json.loads(subprocess.run(
            [BIN, "runs", "--repo", str(repo), "--json"], capture_output=True, text=True,
            check=True).stdout)[0]

        def check(name, fn):
            try:
                fn()
                results.append((name, None))
                print(f"PASS {name}", flush=True)
            except Exception as err:  # noqa: BLE001 - every failure is reported
                detail = "".join(traceback.format_exception_only(type(err), err)).strip()
                results.append((name, detail))
                print(f"FAIL {name}: {detail}", flush=True)

        spans = []

        def protobuf_requests():
            assert run.returncode == 0, run.stderr
            assert received, "no request reached the collector"
            for path, content_type, body in received:
                assert path in ("/v1/traces", "/v1/metrics"), path
                if path != "/v1/traces":
                    continue
                assert content_type == "application/x-protobuf", content_type
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource_spans in request.resource_spans:
                    resource = attributes(resource_spans.resource)
                    assert resource["service.name"] == "fanout", resource
                    for scope_spans in resource_spans.scope_spans:
                        assert scope_spans.scope.name == "fanout"
                        spans.extend(scope_spans.spans)
            assert spans, "no spans"

        def structure():
            traces = {span.trace_id for span in spans}
            assert len(traces) == 1 and len(next(iter(traces))) == 16, traces
            roots = [span for span in spans if not span.parent_span_id]
            assert len(roots) == 1, [span.name for span in roots]
            root = roots[0]
            assert root.name == "invoke_workflow quickstart", root.name
            assert root.start_time_unix_nano <= root.end_time_unix_nano
            ids = {span.span_id for span in spans}
            assert len(ids) == len(spans), "span ids are unique"
            agents = [s for s in spans if attributes(s).get("gen_ai.operation.name") == "invoke_agent"]
            assert len(agents) == shown["agents"]["attempts"], (len(agents), shown["agents"])
            assert all(a.parent_span_id == root.span_id for a in agents)
            agent_ids = {a.span_id for a in agents}
            for span in spans:
                op = attributes(span).get("gen_ai.operation.name")
                if op in ("chat", "execute_tool"):
                    assert span.parent_span_id in agent_ids, span.name
                if op == "chat":
                    assert span.kind == 3, span.kind  # SPAN_KIND_CLIENT
                    assert span.name == "chat " + attributes(span)["gen_ai.request.model"]

        def figures():
            attrs = [attributes(s) for s in spans if attributes(s).get("gen_ai.operation.name") == "invoke_agent"]
            tokens_in = sum(a["gen_ai.usage.input_tokens"] for a in attrs)
            tokens_out = sum(a["gen_ai.usage.output_tokens"] for a in attrs)
            assert tokens_in == shown["agents"]["input_tokens"], (tokens_in, shown["agents"])
            assert tokens_out == shown["agents"]["output_tokens"], (tokens_out, shown["agents"])
            assert all(a["gen_ai.provider.name"] == "anthropic" for a in attrs)
            assert all(isinstance(a["gen_ai.agent.id"], str) for a in attrs)

        def metrics():
            bodies = [body for path, _, body in received if path == "/v1/metrics"]
            assert len(bodies) == 1, len(bodies)
            request = ExportMetricsServiceRequest()
            request.ParseFromString(bodies[0])
            found = {}
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        found[metric.name] = metric
            usage = found["gen_ai.client.token.usage"]
            assert usage.unit == "{token}", usage.unit
            assert usage.histogram.aggregation_temporality == 2  # cumulative
            chats = [s for s in spans if attributes(s).get("gen_ai.operation.name") == "chat"]
            totals = {"input": 0, "output": 0}
            calls = 0
            for point in usage.histogram.data_points:
                kind = attributes(point)["gen_ai.token.type"]
                assert sum(point.bucket_counts) == point.count
                assert len(point.bucket_counts) == len(point.explicit_bounds) + 1
                totals[kind] += point.sum
                if kind == "input":
                    calls += point.count
            assert calls == len(chats), (calls, len(chats))
            assert totals["input"] == shown["agents"]["input_tokens"], (totals, shown["agents"])
            assert totals["output"] == shown["agents"]["output_tokens"], (totals, shown["agents"])
            duration = found["gen_ai.client.operation.duration"]
            assert duration.unit == "s"
            assert sum(p.count for p in duration.histogram.data_points) == len(chats)

        check("OTLP/HTTP protobuf requests parse as ExportTraceServiceRequest", protobuf_requests)
        check("one trace, one root, agents under it, calls under their agents", structure)
        check("GenAI attributes and token totals agree with the run store", figures)
        check("GenAI client metrics parse as ExportMetricsServiceRequest and agree", metrics)
    finally:
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    failed = sum(1 for _, err in results if err)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
