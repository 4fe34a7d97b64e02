"""A local OTLP/HTTP receiver for the benchmarks: accepts every request and discards it (an
empty body is a valid response to an export). It stands where a collector would, so that the
agent's export path runs in full; the file exporter writes OTLP/JSON, whose encoding cannot keep
up with hundreds of thousands of spans per second and would drop them."""
import http.server
import threading


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection per exporter, as with a collector

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.server.lock:
            self.server.requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class DiscardSink:
    """`with DiscardSink() as sink:` serves on 127.0.0.1 (a free port) until the block ends;
    `sink.endpoint` is its URL, `sink.requests` the requests it has received."""

    def __enter__(self):
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.requests = 0
        self._server.lock = threading.Lock()
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def requests(self):
        return self._server.requests

    def exporter_args(self):
        """pyusdt options that export to this sink."""
        return ["--exporter", "otlp", "--otlp-protocol", "http/protobuf", "--otlp-endpoint", self.endpoint]

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
