"""The OpenAI-compatible backend against the fake server of fake_openai.py on 127.0.0.1: success, retries
after HTTP 500 and 429, Retry-After honoured within max_wait_s (a fake clock: no real waiting), a whole
call bounded by max_wait_s (a hang, a reply that trickles in), timeouts, refused connections, malformed
replies, the role (simulated user / judge) in the error, and the API key never leaking."""

import json
import logging
import socket
import time
import traceback

import pytest
from fake_openai import OK, USER_REPLY, FakeOpenAI

from fairalign.envs.rlpa import BackendError, OpenAIChat, Profile, make_judge, make_user
from fairalign.envs.rlpa.backends import retry_after_seconds

KEY = "sk-test-SECRET-9f8e7d"
KEY_ENV = "FAIRALIGN_TEST_API_KEY"
HI = [[{"role": "user", "content": "Hi"}]]


@pytest.fixture
def server():
    with FakeOpenAI() as srv:
        yield srv


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def _client(server, role="chat", **kw):
    kw = {"timeout": 2.0, "max_retries": 2, "backoff": 0.01, **kw}
    return OpenAIChat(server.url(role), "test-model", api_key_env=KEY_ENV, **kw)


def _fake_clock(client):
    """Replace the client's clock and sleep: sleeping advances the clock at once; returns the sleeps."""
    now, sleeps = [1000.0], []

    def sleep(s):
        sleeps.append(s)
        now[0] += s
    client._clock, client._sleep = (lambda: now[0]), sleep
    return sleeps


def _assert_no_key(*texts):
    for t in texts:
        assert KEY not in t


def test_success_sends_model_messages_and_bearer(server, key):
    out = _client(server, "user", temperature=0.2, max_tokens=7).complete(HI)
    assert out == [USER_REPLY]
    (req,) = server.requests
    assert req["role"] == "user" and req["auth"] == f"Bearer {KEY}"
    assert req["body"] == {"model": "test-model", "messages": HI[0], "temperature": 0.2, "max_tokens": 7}


def test_500_and_429_then_success_retries_with_backoff(server, key, caplog):
    server.script("user", [("status", 500), ("status", 429), ("status", 503), OK])
    client = _client(server, "user", max_retries=3, backoff=0.5, max_backoff=8)
    sleeps = _fake_clock(client)
    with caplog.at_level(logging.WARNING):
        assert client.complete(HI) == [USER_REPLY]
    assert len(server.requests) == 4
    assert sleeps == [0.5, 1.0, 2.0]  # backoff * 2^k without Retry-After
    assert "HTTP 500" in caplog.text and "HTTP 429" in caplog.text and "HTTP 503" in caplog.text
    _assert_no_key(caplog.text)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(server, key, status):
    server.script("user", [("status", status, {"Retry-After": "7"}), ("status", status, {"Retry-After": "0.25"}), OK])
    client = _client(server, "user", backoff=0.01, max_wait_s=60)
    sleeps = _fake_clock(client)
    assert client.complete(HI) == [USER_REPLY]
    assert sleeps == [7.0, 0.25]  # what the endpoint asked for, not the 0.01 s backoff


def test_retry_after_past_max_wait_gives_up_at_once(server, key):
    server.script("user", [("status", 429, {"Retry-After": "600"})])
    client = _client(server, "user", max_retries=5, max_wait_s=60)
    sleeps = _fake_clock(client)
    with pytest.raises(BackendError) as e:
        client.complete(HI)
    assert sleeps == [] and len(server.requests) == 1
    assert str(e.value) == (f"openai backend at {server.url('user')}/chat/completions: gave up after 1 of 6 "
                            f"attempts: the endpoint asked to wait 600s (Retry-After), past max_wait_s=60s for one "
                            f"call; last error: HTTP 429: server says: 429 auth=Bearer ***")


def test_backoff_never_waits_past_max_wait(server, key):
    server.script("user", [("status", 500)])
    client = _client(server, "user", max_retries=10, backoff=1.0, max_backoff=8.0, max_wait_s=10)
    sleeps = _fake_clock(client)
    with pytest.raises(BackendError, match=r"gave up after 4 of 11 attempts: the next retry would start after 8s, "
                                           r"past max_wait_s=10s for one call; last error: HTTP 500"):
        client.complete(HI)
    assert sleeps == [1.0, 2.0, 4.0] and len(server.requests) == 4  # 7 s waited; 8 more would pass 10


def test_retry_after_http_date():
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0) == 0.0
    assert retry_after_seconds("12") == 12.0 and retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None


def test_a_hang_is_bounded_by_max_wait(server, key):
    server.script("user", [("sleep", 3.0)])
    client = _client(server, "user", timeout=30, max_retries=3, max_wait_s=0.4)
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match=r"max_wait_s=0.4s for one call"):
        client.complete(HI)
    assert time.perf_counter() - t0 < 1.5
    assert len(server.requests) == 1


def test_a_reply_that_trickles_in_is_cut_at_max_wait(server, key):
    server.script("user", [("trickle", 0.05)])  # ~100 bytes, one every 50 ms: ~5 s in all
    client = _client(server, "user", timeout=2, max_retries=3, max_wait_s=0.5)
    t0 = time.perf_counter()
    with pytest.raises(BackendError, match=r"gave up during attempt 1 of 4: max_wait_s=0.5s for one call passed "
                                           r"while the reply was still arriving"):
        client.complete(HI)
    assert time.perf_counter() - t0 < 1.5


def test_slow_server_times_out_then_clear_error(server, key, caplog):
    server.script("user", [("sleep", 0.6)])
    client = _client(server, "user", timeout=0.15, max_retries=2, backoff=0.01)
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING), pytest.raises(BackendError) as e:
        client.complete(HI)
    assert time.perf_counter() - t0 < 3.0
    msg = str(e.value)
    assert msg == (f"openai backend at {server.url('user')}/chat/completions: failed after 3 attempts; last error: "
                   f"timed out after 0.15s")
    assert len(server.requests) == 3
    _assert_no_key(msg, repr(e.value), "".join(traceback.format_exception(e.value)), caplog.text)
    assert e.value.__cause__ is None and e.value.__context__ is None  # no chained urllib error


def test_malformed_json_and_missing_choices_are_clear_errors_without_retry(server, key):
    server.script("user", [("raw", b"<html>\n oops\n</html>")])
    with pytest.raises(BackendError, match=r"malformed JSON in the reply: '<html> oops </html>'$"):
        _client(server, "user").complete(HI)
    assert len(server.requests) == 1
    server.script("user", [("raw", b'{"choices": []}')])
    with pytest.raises(BackendError, match=r"the reply has no choices\[0\].message.content \(keys: \['choices'\]\)"):
        _client(server, "user").complete(HI)


def test_key_never_leaks(server, key, caplog):
    client = _client(server, "user")
    _assert_no_key(repr(client), str(vars(client)))
    server.script("user", [("status", 401)])  # the server echoes the Authorization header into its body
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as e:
        client.complete(HI)
    assert str(e.value).endswith("HTTP 401: server says: 401 auth=Bearer *** (not retried)")
    _assert_no_key(str(e.value), repr(e.value), "".join(traceback.format_exception(e.value)), caplog.text)
    assert server.requests[0]["auth"] == f"Bearer {KEY}"  # it was sent, just never shown


def test_missing_key_env_and_bad_config(server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(BackendError, match=f"environment variable {KEY_ENV} .* is not set"):
        _client(server).complete(HI)
    keyless = OpenAIChat(server.url("user"), "m", api_key_env=None, max_retries=0)
    assert keyless.complete(HI) == [USER_REPLY]
    assert server.requests[-1]["auth"] is None
    with pytest.raises(ValueError, match="base_url must start with http"):
        OpenAIChat("127.0.0.1:8000", "m")
    for bad, msg in ((dict(timeout=0), "timeout must be > 0"), (dict(max_wait_s=-1), "max_wait_s must be > 0"),
                     (dict(max_retries=1.5), "max_retries must be an integer >= 0"),
                     (dict(backoff=-1), "backoff must be >= 0")):
        with pytest.raises(ValueError, match=msg):
            OpenAIChat("http://x", "m", **bad)


def test_connection_refused_is_retried_then_reported(key):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on this port now
    client = OpenAIChat(f"http://127.0.0.1:{port}/v1", "m", api_key_env=KEY_ENV, max_retries=1, backoff=0.01)
    with pytest.raises(BackendError, match="failed after 2 attempts; last error: connection error: .*refused"):
        client.complete(HI)


def test_the_error_names_the_simulated_user_or_the_judge(server, key):
    server.script("user", [("status", 500)])
    user = make_user("openai", base_url=server.url("user"), model="m", api_key_env=KEY_ENV, backoff=0.01,
                     max_retries=1)
    states = user.start([Profile(age=30, location="Oslo")])
    hist = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Where do you live?"}]
    with pytest.raises(BackendError) as e:
        user.reply(states, [hist])
    assert str(e.value) == (f"simulated user at {server.url('user')}/chat/completions: failed after 2 attempts; "
                            f"last error: HTTP 500: server says: 500 auth=Bearer ***")
    assert e.value.role == "simulated user" and e.value.__suppress_context__  # one error in a traceback
    server.script("judge", [("raw", b"not json")])
    judge = make_judge({"backend": "openai", "base_url": server.url("judge"), "model": "m", "api_key_env": KEY_ENV})
    with pytest.raises(BackendError) as e:
        judge(["Nice!"], [{}], [hist])
    assert str(e.value) == (f"judge at {server.url('judge')}/chat/completions: malformed JSON in the reply: "
                            f"'not json'")


def test_batched_requests_keep_order_and_users_judges_work(server, key):
    convs = [[{"role": "user", "content": f"msg {i}"}] for i in range(6)]
    server.script("chat", [("echo",)])
    assert _client(server, max_workers=3).complete(convs) == [f"echo: msg {i}" for i in range(6)]

    user = make_user("openai", base_url=server.url("user"), model="m", api_key_env=KEY_ENV)
    states = user.start([Profile(age=30, location="Oslo")])
    hist = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Where do you live?"}]
    assert user.reply(states, [hist]) == [USER_REPLY]
    assert "Location: Oslo" in server.requests[-1]["body"]["messages"][0]["content"]
    assert ("Location", "Oslo") in user.revealed(states[0])

    verdict = json.dumps({c: True for c in ("natural", "relevant", "consistent", "engaging", "informative")})
    server.script("judge", [("raw", f'{{"choices": [{{"message": {{"content": {json.dumps(v)}}}}}]}}'.encode())
                            for v in (verdict, verdict.replace("true}", "false}"))])
    judge = make_judge({"backend": "openai", "base_url": server.url("judge"), "model": "m",
                        "api_key_env": KEY_ENV, "max_workers": 1})
    assert judge(["Nice!", "Nice!"], [{}, {}], [hist, hist]) == [1.0, 0.0]
