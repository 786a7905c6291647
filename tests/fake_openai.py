"""Test support: a fake OpenAI-compatible `/chat/completions` server on 127.0.0.1, in a thread of the test.

    with FakeOpenAI() as srv:                   # listens on a free port until the block ends
        srv.url("user")                          # http://127.0.0.1:PORT/user/v1 (a base_url)
        srv.script("user", [OK] * 2 + [("status", 500)])   # what the next requests to /user/... get

Requests to `/ROLE/v1/chat/completions` follow ROLE's script one action per request, the last action
repeating forever. Actions:
    ("ok",)                       200 with a reply: the judge's all-true verdict, or a user's fixed sentence
    ("status", code, {headers})   that HTTP status; the body echoes the Authorization header (to show scrubbing)
    ("raw", bytes)                200 with this body
    ("echo",)                     200 with "echo: " + the request's last message
    ("sleep", seconds)            answer ("ok") only after this long (a hang past the client's timeout)
    ("trickle", seconds)          200 whose body arrives one byte every `seconds`
    ("refuse",)                   drop the connection and stop listening: later requests are refused
                                  until `start()` listens again on the same port
Every request is recorded in `requests` (role, Authorization header, JSON body). Simplification: the
replies (but echo's) do not depend on the request, so a run against the fake server is deterministic.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CRITERIA = ("natural", "relevant", "consistent", "engaging", "informative")
OK = ("ok",)
USER_REPLY = "I live in Oslo and I work as a nurse."


def completion(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_POST(self):
        fake: FakeOpenAI = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        role = self.path.strip("/").split("/")[0]
        action = fake.next_action(role, self.headers.get("Authorization"), body)
        kind = action[0]
        if kind == "refuse":  # stop listening first (from this handler thread), then drop the connection
            fake.stop()
            self.close_connection = True
            return
        if kind == "sleep":
            time.sleep(action[1])
        status, headers, payload = 200, {}, b""
        if kind in ("ok", "sleep", "trickle"):
            verdict = json.dumps({c: True for c in CRITERIA})
            payload = completion(verdict if role == "judge" else USER_REPLY)
        elif kind == "status":
            status, headers = action[1], (action[2] if len(action) > 2 else {})
            payload = f"server says: {status} auth={self.headers.get('Authorization')}".encode()
        elif kind == "raw":
            payload = action[1]
        elif kind == "echo":
            payload = completion("echo: " + body["messages"][-1]["content"])
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for k, v in headers.items():
                self.send_header(k, str(v))
            self.end_headers()
            if kind == "trickle":
                for i in range(len(payload)):
                    self.wfile.write(payload[i:i + 1])
                    self.wfile.flush()
                    time.sleep(action[1])
            else:
                self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass


class FakeOpenAI:
    """The fake endpoint (see the module docstring); a context manager that starts and stops it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.scripts: dict[str, list] = {}
        self.port = 0
        self._server: ThreadingHTTPServer | None = None

    def url(self, role: str) -> str:
        return f"http://127.0.0.1:{self.port}/{role}/v1"

    def script(self, role: str, actions: list) -> None:
        with self.lock:
            self.scripts[role] = list(actions)

    def count(self, role: str) -> int:
        with self.lock:
            return sum(r["role"] == role for r in self.requests)

    def next_action(self, role: str, auth: str | None, body: dict):
        with self.lock:
            self.requests.append({"role": role, "auth": auth, "body": body})
            script = self.scripts.setdefault(role, [OK])
            return script.pop(0) if len(script) > 1 else script[0]

    def start(self) -> "FakeOpenAI":
        srv = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        srv.daemon_threads = True
        srv.fake = self
        self.port = srv.server_address[1]
        self._server = srv
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        with self.lock:
            srv, self._server = self._server, None
        if srv is not None:
            srv.shutdown()
            srv.server_close()

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
