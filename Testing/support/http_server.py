"""A real HTTP server on 127.0.0.1 (ephemeral port) for download tests, with fault modes.

    with WeightsServer({"/Dataset291_x.zip": zip_bytes}) as srv:
        srv.fault = "drop_once"          # see FAULTS
        url = srv.url("/Dataset291_x.zip")
        ...
        srv.requests                     # [{"method", "path", "headers", "body"}] as received

GET serves files with Range support (206 + Content-Range; If-Range against the ETag).
POST to `license_path` serves `license_files[task]` when the JSON body's license_number
equals `license_key`, else 403 {"status": "invalid_license"}, like the licence server.
"""
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = {
    None: "serve normally",
    "drop_once": "first request: headers for the whole file, half the body, then close; later requests normal",
    "ignore_range": "always 200 with the whole file, whatever Range says",
    "500": "always HTTP 500",
    "500_once": "first request HTTP 500, then normal",
    "stall": "headers and (first request only) a quarter of the body, then no more bytes until the server stops",
    "slow": "body in 4 KiB pieces, 20 ms apart",
    "huge": "announce a Content-Length of 10 PB (then send nothing)",
    "html": "200 with an HTML page instead of the zip (captive portal)",
    "no_validator": "no ETag, If-Range ignored (a changed file is resumed blindly)",
    "json_200": "licence server: a wrong key gets 200 with a JSON status instead of 403",
    "no_answer": "accept the connection and read the request, then send nothing until the server stops",
    "headers_stall": "send the status line, then nothing more (the headers never end)",
    "trickle": "headers for the whole file, then one byte every 50 ms (20 bytes/s)",
}


class WeightsServer:
    def __init__(self, files=None, license_key=None, license_files=None, license_path="/download_weights",
                 tls=None):
        """`tls`: (certfile, keyfile) to serve https instead of http."""
        self.files = dict(files or {})
        self.license_key, self.license_files, self.license_path = license_key, dict(license_files or {}), license_path
        self.fault = None
        self.requests = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.scheme = "http"
        if tls:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path=""):
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _record(self, handler, body):
        with self._lock:
            self.requests.append({"method": handler.command, "path": handler.path,
                                  "headers": dict(handler.headers.items()), "body": body})
            return len(self.requests)

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                n = server._record(self, None)
                data = server.files.get(self.path.split("?")[0])
                self._serve(data, n)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = None
                n = server._record(self, body)
                if self.path != server.license_path or not isinstance(body, dict):
                    return self._send_json(404, {"status": "not_found"})
                if body.get("license_number") != server.license_key:
                    return self._send_json(200 if server.fault == "json_200" else 403, {"status": "invalid_license"})
                self._serve(server.license_files.get(body.get("task")), n)

            def _send_json(self, code, obj):
                payload = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _serve(self, data, n):
                fault = server.fault
                try:
                    if fault == "no_answer":
                        server._stop.wait(60)
                        self.close_connection = True
                        return
                    if fault == "headers_stall":
                        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                        self.wfile.flush()
                        server._stop.wait(60)
                        self.close_connection = True
                        return
                    if data is None:
                        return self._send_json(404, {"status": "not_found"})
                    if fault == "500" or (fault == "500_once" and n == 1):
                        return self._send_json(500, {"status": "error"})
                    if fault == "html":
                        page = b"<html><body>Please log in to the hospital network</body></html>"
                        self.send_response(200)
                        self.send_header("Content-Type", "text/html")
                        self.send_header("Content-Length", str(len(page)))
                        self.end_headers()
                        return self.wfile.write(page)
                    etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
                    start = 0
                    rng = self.headers.get("Range")
                    if_range = self.headers.get("If-Range")
                    if rng and fault != "ignore_range" and (if_range in (None, etag) or fault == "no_validator"):
                        start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data) and start:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    body = data[start:]
                    self.send_response(206 if start else 200)
                    self.send_header("Content-Type", "application/zip")
                    if fault != "no_validator":
                        self.send_header("ETag", etag)
                    self.send_header("Accept-Ranges", "bytes")
                    if start:
                        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    self.send_header("Content-Length", str(10 ** 16 if fault == "huge" else len(body)))
                    self.end_headers()
                    if fault == "huge":
                        return
                    if fault == "drop_once" and n == 1:
                        self.wfile.write(body[: len(body) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    if fault == "stall":
                        self.wfile.write(body[: len(body) // 4] if n == 1 else b"")
                        self.wfile.flush()
                        server._stop.wait(30)
                        self.close_connection = True
                        return
                    if fault == "trickle":
                        for i in range(len(body)):
                            if server._stop.wait(0.05):
                                return
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                        return
                    if fault == "slow":
                        for i in range(0, len(body), 4096):
                            if server._stop.is_set():
                                return
                            self.wfile.write(body[i:i + 4096])
                            self.wfile.flush()
                            time.sleep(0.02)
                        return
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    self.close_connection = True

        return Handler
