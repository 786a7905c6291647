"""The OpenAI-compatible backend against a tiny local http.server on 127.0.0.1: success, retries
after HTTP 500, timeouts with bounded retries, malformed JSON, and the API key never leaking."""

import json
import logging
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from fairalign.envs.rlpa import BackendError, OpenAIChat, make_judge, make_user
from fairalign.envs.rlpa import Profile

KEY = "sk-test-SECRET-9f8e7d"
KEY_ENV = "FAIRALIGN_TEST_API_KEY"


def _completion(text):
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            action = srv.script.pop(0) if len(srv.script) > 1 else srv.script[0]
        kind = action[0]
        if kind == "sleep":
            time.sleep(action[1])
            payload, status = _completion("late"), 200
        elif kind == "status":
            payload, status = f"server says: {action[1]} auth={self.headers.get('Authorization')}".encode(), action[1]
        elif kind == "raw":
            payload, status = action[1], 200
        elif kind == "echo":
            payload, status = _completion("echo: " + body["messages"][-1]["content"]), 200
        else:
            payload, status = _completion(action[1]), 200
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.lock, srv.requests, srv.script = threading.Lock(), [], [("ok", "hi")]
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    t.start()
    srv.base_url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def _client(server, **kw):
    kw = {"timeout": 2.0, "max_retries": 2, "backoff": 0.01, **kw}
    return OpenAIChat(server.base_url, "test-model", api_key_env=KEY_ENV, **kw)


def _assert_no_key(*texts):
    for t in texts:
        assert KEY not in t


def test_success_sends_model_messages_and_bearer(server, key):
    server.script = [("ok", "  Hello back!  ")]
    out = _client(server, temperature=0.2, max_tokens=7).complete([[{"role": "user", "content": "Hi"}]])
    assert out == ["Hello back!"]
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions" and req["auth"] == f"Bearer {KEY}"
    assert req["body"] == {"model": "test-model", "messages": [{"role": "user", "content": "Hi"}],
                           "temperature": 0.2, "max_tokens": 7}


def test_500_then_success_retries(server, key, caplog):
    server.script = [("status", 500), ("status", 503), ("ok", "fine")]
    with caplog.at_level(logging.WARNING):
        assert _client(server).complete([[{"role": "user", "content": "x"}]]) == ["fine"]
    assert len(server.requests) == 3
    assert "HTTP 500" in caplog.text and "HTTP 503" in caplog.text
    _assert_no_key(caplog.text)


def test_slow_server_times_out_then_clear_error(server, key, caplog):
    server.script = [("sleep", 0.6)]
    client = _client(server, timeout=0.15, max_retries=2, backoff=0.01)
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING), pytest.raises(BackendError) as e:
        client.complete([[{"role": "user", "content": "x"}]])
    assert time.perf_counter() - t0 < 3.0
    msg = str(e.value)
    assert "failed after 3 attempts" in msg and "timed out after 0.15s" in msg and "/v1/chat/completions" in msg
    assert len(server.requests) == 3
    _assert_no_key(msg, repr(e.value), "".join(traceback.format_exception(e.value)), caplog.text)
    assert e.value.__cause__ is None and e.value.__context__ is None  # no chained urllib error


def test_malformed_json_is_a_clear_error_without_retry(server, key):
    server.script = [("raw", b"<html>oops</html>")]
    with pytest.raises(BackendError, match="malformed JSON.*oops"):
        _client(server).complete([[{"role": "user", "content": "x"}]])
    assert len(server.requests) == 1
    server.script = [("raw", b'{"choices": []}')]
    with pytest.raises(BackendError, match="no choices"):
        _client(server).complete([[{"role": "user", "content": "x"}]])


def test_key_never_leaks(server, key, caplog):
    client = _client(server)
    _assert_no_key(repr(client), str(vars(client)))
    server.script = [("status", 401)]  # the server echoes the Authorization header into its body
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as e:
        client.complete([[{"role": "user", "content": "x"}]])
    assert "HTTP 401" in str(e.value) and "auth=Bearer ***" in str(e.value)
    _assert_no_key(str(e.value), repr(e.value), "".join(traceback.format_exception(e.value)), caplog.text)
    assert server.requests[0]["auth"] == f"Bearer {KEY}"  # it was sent, just never shown


def test_missing_key_env_and_bad_config(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(BackendError, match=f"environment variable {KEY_ENV} .* is not set"):
        _client(server).complete([[{"role": "user", "content": "x"}]])
    keyless = OpenAIChat(server.base_url, "m", api_key_env=None, max_retries=0)
    assert keyless.complete([[{"role": "user", "content": "x"}]]) == ["hi"]
    assert server.requests[-1]["auth"] is None
    with pytest.raises(ValueError, match="base_url must start with http"):
        OpenAIChat("127.0.0.1:8000", "m")
    with pytest.raises(ValueError, match="timeout"):
        OpenAIChat("http://x", "m", timeout=0)


def test_connection_refused_is_retried_then_reported(key):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on this port now
    client = OpenAIChat(f"http://127.0.0.1:{port}/v1", "m", api_key_env=KEY_ENV, max_retries=1, backoff=0.01)
    with pytest.raises(BackendError, match="failed after 2 attempts; last error: connection error"):
        client.complete([[{"role": "user", "content": "x"}]])


def test_batched_requests_keep_order_and_users_judges_work(server, key):
    server.script = [("echo",)]
    convs = [[{"role": "user", "content": f"msg {i}"}] for i in range(6)]
    assert _client(server, max_workers=3).complete(convs) == [f"echo: msg {i}" for i in range(6)]

    user = make_user("openai", base_url=server.base_url, model="m", api_key_env=KEY_ENV)
    states = user.start([Profile(age=30, location="Oslo")])
    hist = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Where do you live?"}]
    assert user.reply(states, [hist]) == ["echo: Where do you live?"]
    assert "Location: Oslo" in server.requests[-1]["body"]["messages"][0]["content"]

    verdict = json.dumps({c: True for c in ("natural", "relevant", "consistent", "engaging", "informative")})
    server.script = [("ok", verdict), ("ok", verdict.replace("true}", "false}"))]
    judge = make_judge({"backend": "openai", "base_url": server.base_url, "model": "m",
                        "api_key_env": KEY_ENV, "max_workers": 1})
    assert judge(["Nice!", "Nice!"], [{}, {}], [hist, hist]) == [1.0, 0.0]
