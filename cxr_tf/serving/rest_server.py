"""A local stand-in for TF Serving's HTTP front end: its REST URLs for one exported model.

TF Serving cannot be installed here (no binary package, no Docker daemon). `ModelServer` answers
`POST /v1/models/<name>[/versions/<n>]:predict` and `GET /v1/models/<name>` with the JSON codec
of serving.rest_json, concurrently and with timeouts and size limits so that one client cannot
block the others, for trying curl commands and client code locally. It is a test double, not a
production server: deploy the export with TF Serving itself (docs/serving.md).

Example:
  server = rest_server.ModelServer("work/export", "cxr", port=8501)
  server.serve_forever()
"""

import http
import http.server
import json
import logging
import os
import re
import socketserver
import threading
import time

import tensorflow as tf

from cxr_tf import saved_models
from cxr_tf.serving import rest_json

log = logging.getLogger("cxr_tf")

_PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:(classify|regress|predict)",
                           re.IGNORECASE)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+))?", re.IGNORECASE)


# Defaults of the local server's limits (flags of cxr-rest): a request body of at most 32 MiB
# (a 4,096 x 4,096 16-bit PNG is about 25 MiB once base64-encoded), 30 s to send a request,
# 16 connections at a time (beyond them a 503 at once), 2 predictions at a time (a 2-core CPU).
# Worst-case memory held by request bodies is max_connections x max_body_bytes (512 MiB).
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
DEFAULT_CLIENT_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 16
DEFAULT_MAX_PREDICTIONS = 2
_CHUNK = 64 * 1024


class _HttpError(Exception):
    """A request that cannot be read: HTTP status and message; the connection is closed."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


class ModelServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """TF Serving's REST URLs for one model, its latest version loaded (TF Serving's default
    version policy). For local tests of requests and clients; not for production.

    Clients are served concurrently, each connection in its own thread, with bounds that keep
    one client from holding the others up or the process from growing without limit:
      - `client_timeout`: seconds a client may take to send a request (headers and body); an
        idle keep-alive connection is closed after it, a slow body gets 408;
      - `max_body_bytes`: larger bodies get 413 before they are read;
      - `max_connections`: connections beyond it get 503 at once and are closed;
      - `max_predictions`: predictions running at a time (the rest wait their turn).
    Malformed framing gets a JSON error and the connection is closed: no Content-Length (411),
    a Content-Length that is not a non-negative integer (400), a body shorter than announced
    (400), an unsupported Transfer-Encoding (501); chunked bodies are read.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, model_base_path: str | os.PathLike, model_name: str,
                 host: str = "127.0.0.1", port: int = 8501,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 client_timeout: float = DEFAULT_CLIENT_TIMEOUT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_predictions: int = DEFAULT_MAX_PREDICTIONS):
        for name, value in (("max_body_bytes", max_body_bytes), ("client_timeout", client_timeout),
                            ("max_connections", max_connections),
                            ("max_predictions", max_predictions)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.model_name = model_name
        path = saved_models.resolve_version(model_base_path)
        name = os.path.basename(os.path.normpath(path))
        self.version = int(name) if name.isdigit() else 1
        self.loaded = tf.saved_model.load(path)
        self.max_body_bytes = int(max_body_bytes)
        self.client_timeout = float(client_timeout)
        self._connections = threading.BoundedSemaphore(int(max_connections))
        self._predictions = threading.BoundedSemaphore(int(max_predictions))
        super().__init__((host, port), _Handler)

    def process_request(self, request, client_address):
        if not self._connections.acquire(blocking=False):
            try:
                request.sendall(_raw_response(503, {"error": "Too many connections: try again "
                                                             "shortly"}))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connections.release()

    def handle_request_path(self, method, path, body):
        """(HTTP status, response dict) for one request."""
        path = path.split("?", 1)[0]
        if method == "POST" and (m := _PREDICT_PATH.fullmatch(path)):
            name, version, verb = m.groups()
            if error := self._find(name, version):
                return error
            if verb.lower() != "predict":
                return 501, {"error": f"{verb} is not served by this stand-in (only predict)"}
            with self._predictions:
                return rest_json.predict(self.loaded, body)
        if method == "GET" and (m := _STATUS_PATH.fullmatch(path)):
            name, version = m.groups()
            if not name:
                return 400, {"error": "Missing model name in request."}
            if error := self._find(name, version):
                return error
            return 200, {"model_version_status": [{
                "version": str(self.version), "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""}}]}
        return 400, {"error": f"Malformed request: {method} {path}"}

    def _find(self, name, version):
        if name != self.model_name or (version is not None and int(version) != self.version):
            spec = f"Specific({name}, {int(version)})" if version else f"Latest({name})"
            return 404, {"error": f"Servable not found for request: {spec}"}
        return None


def _raw_response(status, response, close=True):
    data = json.dumps(response, indent=1).encode()
    phrase = http.HTTPStatus(status).phrase
    head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n" + ("Connection: close\r\n" if close else "")
            + "\r\n")
    return head.encode() + data


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        self.timeout = self.server.client_timeout  # socket timeout: idle and slow clients
        super().setup()

    def _deadline(self):
        return time.monotonic() + self.server.client_timeout

    def _read(self, n, deadline):
        """Exactly n bytes of the body, within the deadline."""
        parts, left = [], n
        while left:
            if time.monotonic() > deadline:
                raise _HttpError(408, f"Request body not received within "
                                      f"{self.server.client_timeout:g} s")
            try:
                part = self.rfile.read1(min(left, _CHUNK))
            except TimeoutError:
                raise _HttpError(408, f"Request body not received within "
                                      f"{self.server.client_timeout:g} s") from None
            if not part:
                raise _HttpError(400, f"Request body ended after {n - left} of the {n} bytes "
                                      f"announced by Content-Length")
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def _readline(self, deadline, what):
        if time.monotonic() > deadline:
            raise _HttpError(408, f"Request not received within {self.server.client_timeout:g} s")
        try:
            line = self.rfile.readline(1024)
        except TimeoutError:
            raise _HttpError(408, f"Request not received within "
                                  f"{self.server.client_timeout:g} s") from None
        if not line.endswith(b"\n"):
            raise _HttpError(400, f"Malformed chunked body: bad {what}")
        return line.strip()

    def _read_chunked(self, deadline):
        parts, total = [], 0
        while True:
            size_line = self._readline(deadline, "chunk size line").split(b";", 1)[0]
            try:
                size = int(size_line, 16)
            except ValueError:
                raise _HttpError(400, f"Malformed chunked body: chunk size {size_line[:20]!r} "
                                      f"is not hexadecimal") from None
            if size == 0:
                while self._readline(deadline, "trailer"):
                    pass
                return b"".join(parts)
            total += size
            if total > self.server.max_body_bytes:
                raise _HttpError(413, f"Request body exceeds the limit of "
                                      f"{self.server.max_body_bytes} bytes")
            parts.append(self._read(size, deadline))
            if self._read(2, deadline) != b"\r\n":
                raise _HttpError(400, "Malformed chunked body: chunk not followed by CRLF")

    def _body(self, method):
        deadline = self._deadline()
        encoding = self.headers.get("Transfer-Encoding")
        length = self.headers.get("Content-Length")
        if encoding is not None:
            if encoding.strip().lower() != "chunked":
                raise _HttpError(501, f"Transfer-Encoding {encoding!r} is not supported (send "
                                      f"Content-Length or chunked)")
            return self._read_chunked(deadline)
        if length is None:
            if method == "POST":
                raise _HttpError(411, "Content-Length required (or Transfer-Encoding: chunked)")
            return b""
        try:
            n = int(length.strip())
            if n < 0 or not length.strip().isdigit():
                raise ValueError
        except ValueError:
            raise _HttpError(400, f"Content-Length must be a non-negative integer, got "
                                  f"{length!r}") from None
        if n > self.server.max_body_bytes:
            raise _HttpError(413, f"Request body of {n} bytes exceeds the limit of "
                                  f"{self.server.max_body_bytes} bytes")
        return self._read(n, deadline) if n else b""

    def _reply(self, method):
        try:
            body = self._body(method)
        except _HttpError as e:
            self._send(e.status, {"error": e.message}, close=True)
            return
        status, response = self.server.handle_request_path(method, self.path, body)
        self._send(status, response)

    def _send(self, status, response, close=False):
        if close:
            self.close_connection = True
        try:
            self.wfile.write(_raw_response(status, response, close=close))
            self.wfile.flush()
        except OSError:
            self.close_connection = True
        self.log_request(status)

    def send_error(self, code, message=None, explain=None):
        """Errors found by http.server itself (a bad request line, headers too long), as JSON."""
        self._send(code, {"error": message or explain or http.HTTPStatus(code).phrase},
                   close=True)

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self._reply("POST")

    def do_GET(self):  # noqa: N802
        self._reply("GET")

    def log_message(self, fmt, *args):
        log.info("%s %s", self.address_string(), fmt % args)
