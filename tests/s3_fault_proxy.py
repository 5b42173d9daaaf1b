"""An HTTP proxy in front of the local S3 server that answers a share of requests with S3's
transient errors (500 InternalError, 503 SlowDown) or stalls them, by a seeded plan, and can
refuse chosen keys for good (403 AccessDenied): the S3 fault drills run the real client
against it."""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ERRORS = {500: "InternalError", 503: "SlowDown"}


class FaultPlan:
    def __init__(self, seed: int = 0, error_share: float = 0.0, stall_share: float = 0.0, stall_s: float = 3.0,
                 denied: tuple[str, ...] = ()):
        self.rng, self.lock = random.Random(seed), threading.Lock()
        self.error_share, self.stall_share, self.stall_s, self.denied = error_share, stall_share, stall_s, denied
        self.seen: Counter = Counter()

    def decide(self, method: str, path: str) -> tuple[str, int | None]:
        with self.lock:
            self.seen["requests"] += 1
            if any(part in path for part in self.denied) and method in ("PUT", "POST"):
                self.seen["denied"] += 1
                return "deny", 403
            draw = self.rng.random()
            if draw < self.error_share:
                status = self.rng.choice(sorted(ERRORS))
                self.seen[f"error {status}"] += 1
                return "error", status
            if draw < self.error_share + self.stall_share:
                self.seen["stalled"] += 1
                return "stall", None
            return "pass", None


def start_proxy(target: str, plan: FaultPlan) -> tuple[str, ThreadingHTTPServer]:
    upstream = urlsplit(target)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _forward(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            action, status = plan.decide(self.command, self.path)
            if action == "stall":
                time.sleep(plan.stall_s)  # longer than the client's read timeout: it gives up and retries
                self.close_connection = True
                return
            if action in ("error", "deny"):
                code = ERRORS.get(status, "AccessDenied")
                payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                           f"<Message>injected by the drill</Message></Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":  # an answer to HEAD has no body: bytes left over would
                    self.wfile.write(payload)  # be read as the next answer on the kept-alive connection
                return
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            headers["Host"] = upstream.netloc
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                # A HEAD answer keeps the object's length; others carry the body read here.
                if key.lower() not in ("transfer-encoding", "connection") and \
                        (key.lower() != "content-length" or self.command == "HEAD"):
                    self.send_header(key, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            connection.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server
