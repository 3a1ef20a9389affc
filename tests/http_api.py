"""A local HTTP server that imitates a provider's API: it records requests, serves scripted replies."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional, Union
from urllib.parse import parse_qs, urlsplit


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: Dict[str, List[str]]
    headers: Dict[str, str]
    body: bytes
    client: tuple = ()  # the client's (host, port): one per TCP connection

    @property
    def form(self) -> Dict[str, str]:
        """The body, form-decoded (last value per key)."""
        return {key: values[-1] for key, values in parse_qs(self.body.decode()).items()}

    @property
    def json(self):
        return json.loads(self.body or b'null')


@dataclass
class Reply:
    status: int = 200
    body: Union[dict, list, str, None] = None
    headers: Dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (timeouts)


Route = Union[Reply, Callable[[RecordedRequest], Reply]]


class LocalAPIServer:
    """``ThreadingHTTPServer`` on 127.0.0.1:<free port>; ``routes[(method, path)]`` are replies.

    A route may be a :class:`Reply`, a callable taking the request, or a list of replies served
    in turn (the last one repeats). Unknown routes answer 404 with a JSON error.

    With ``keep_alive`` it speaks HTTP/1.1 and keeps a connection open until the client closes
    it; ``closed`` lists the client addresses of the connections closed so far.
    """

    def __init__(self, keep_alive: bool = False):
        self.requests: List[RecordedRequest] = []
        self.routes: Dict[tuple, Union[Route, List[Reply]]] = {}
        self.closed: List[tuple] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1' if keep_alive else 'HTTP/1.0'

            def finish(self):
                super().finish()
                server.closed.append(self.client_address)

            def log_message(self, *args):  # keep test output clean
                pass

            def _handle(self):
                length = int(self.headers.get('Content-Length') or 0)
                parts = urlsplit(self.path)
                request = RecordedRequest(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    dict(self.headers.items()),
                    self.rfile.read(length) if length else b'',
                    self.client_address,
                )
                server.requests.append(request)
                reply = server._reply_for(request)
                if reply.delay:
                    time.sleep(reply.delay)
                body = reply.body
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header('Content-Type', 'text/plain' if isinstance(body, str) else 'application/json')
                    self.send_header('Content-Length', str(len(data)))
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f'http://{host}:{port}'

    def _reply_for(self, request: RecordedRequest) -> Reply:
        route = self.routes.get((request.method, request.path))
        if route is None:
            return Reply(404, {'error': f'no route for {request.method} {request.path}'})
        if isinstance(route, list):
            return route.pop(0) if len(route) > 1 else route[0]
        return route(request) if callable(route) else route

    def start(self) -> 'LocalAPIServer':
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        self.requests.clear()
        self.routes.clear()
        self.closed.clear()

    def find(self, path: str, method: Optional[str] = None) -> List[RecordedRequest]:
        return [r for r in self.requests if r.path == path and (method is None or r.method == method)]
