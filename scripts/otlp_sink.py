"""A collector for benchmarks: accepts every OTLP/HTTP request on loopback and discards it.

Usage: otlp_sink.py PORT

Answers 200 with an empty body to any POST (traces, metrics), after reading the request, and
prints nothing per request; prints the request count and bytes on Ctrl-C. Loopback only.
"""

import http.server
import sys

totals = {"requests": 0, "bytes": 0}


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 - the http.server API
        length = int(self.headers.get("content-length", 0))
        self.rfile.read(length)
        totals["requests"] += 1
        totals["bytes"] += length
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    print(f"{totals['requests']} request(s), {totals['bytes']} bytes", flush=True)


if __name__ == "__main__":
    main()
