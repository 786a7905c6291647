"""Chat-completion backends shared by LLM-simulated users and the LLM judge.

Both expose `complete(conversations: list[list[dict]]) -> list[str]` (one reply per chat):
- `HFChat`: a local transformers causal LM + tokenizer, batched left-padded `generate`.
- `OpenAIChat`: any OpenAI-compatible `/chat/completions` endpoint over the stdlib (urllib), with a
  timeout per attempt, bounded retries (timeouts, connection errors, HTTP 429/5xx) with exponential
  backoff or the wait a 429/503 asks for in `Retry-After`, and a bound on a whole call (`max_wait_s`:
  all its attempts and waits; a reply still arriving then is cut off). The API key is read from the
  environment variable named by `api_key_env` at request time; it is never stored on the object,
  logged, or put into an exception message.

A failure after the retries (or one that retrying cannot fix: HTTP 4xx, a reply that is not JSON or has
no `choices`) is a `BackendError` (an `EnvironmentFault`): one line naming who was talking (the
simulated user or judge sets `role`), the endpoint and the fault.

Simplifications: no streaming; HF sampling uses torch's global RNG (seed it outside for
reproducibility); OpenAI requests of a batch run in a small thread pool, each with its own bound;
a TLS handshake is bounded by `timeout` per read, not by `max_wait_s`.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from fairalign.errors import EnvironmentFault

log = logging.getLogger(__name__)


class BackendError(EnvironmentFault):
    """A chat backend failed (after retries, or with a non-retryable error). `fault` says what went wrong,
    `endpoint` is the URL, `role` who was talking ("simulated user", "judge"; None outside them); the
    message is one line of the three, never a credential."""

    def __init__(self, fault: str, endpoint: str | None = None, role: str | None = None):
        self.fault, self.endpoint, self.role = fault, endpoint, role
        where = f" at {endpoint}" if endpoint else ""
        super().__init__(f"{role or 'openai backend'}{where}: {fault}")

    def with_role(self, role: str) -> "BackendError":
        """The same fault, said by `role` (a user or judge re-raises its backend's error with this)."""
        return BackendError(self.fault, self.endpoint, role)


class HFChat:
    """Batched chat completion with a local transformers model (any causal LM with a chat template)."""

    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 64, temperature: float = 0.7,
                 top_p: float = 0.95, do_sample: bool = True, batch_size: int = 16):
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.do_sample, self.batch_size = do_sample, batch_size

    def __repr__(self) -> str:
        return (f"HFChat(model={type(self.model).__name__}, max_new_tokens={self.max_new_tokens}, "
                f"do_sample={self.do_sample})")

    def complete(self, conversations: Sequence[Sequence[dict]]) -> list[str]:
        import torch

        tok = self.tokenizer
        texts = [tok.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True)
                 for c in conversations]
        old_side, old_pad = tok.padding_side, tok.pad_token
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        gen_kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                                      "pad_token_id": tok.pad_token_id}
        if self.do_sample:
            gen_kwargs.update(temperature=self.temperature, top_p=self.top_p)
        out: list[str] = []
        try:
            for k in range(0, len(texts), self.batch_size):
                enc = tok(texts[k:k + self.batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False).to(self.model.device)
                with torch.no_grad():
                    ids = self.model.generate(**enc, **gen_kwargs)  # [B, P + new]
                new = ids[:, enc["input_ids"].shape[1]:]  # [B, new]
                out.extend(t.strip() for t in tok.batch_decode(new, skip_special_tokens=True))
        finally:
            tok.padding_side = old_side
            if old_pad is None:
                tok.pad_token = None
        return out


class OpenAIChat:
    """OpenAI-compatible chat endpoint (`{base_url}/chat/completions`), stdlib only."""

    _clock = staticmethod(time.monotonic)  # replaceable by a test (a fake clock and sleep)
    _sleep = staticmethod(time.sleep)

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 30.0, max_retries: int = 3, backoff: float = 0.5,
                 max_backoff: float = 8.0, max_wait_s: float = 180.0, temperature: float = 0.7,
                 max_tokens: int = 128, max_workers: int = 8, extra_body: dict | None = None):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        for name, value in (("timeout", timeout), ("max_wait_s", max_wait_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
        for name, value in (("backoff", backoff), ("max_backoff", max_backoff)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {value!r}")
        for name, value, low in (("max_retries", max_retries, 0), ("max_workers", max_workers, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.timeout, self.max_retries, self.max_wait_s = float(timeout), max_retries, float(max_wait_s)
        self.backoff, self.max_backoff = backoff, max_backoff
        self.temperature, self.max_tokens = temperature, max_tokens
        self.max_workers, self.extra_body = max_workers, dict(extra_body or {})

    def __repr__(self) -> str:  # never the key itself
        return f"OpenAIChat(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def _error(self, fault: str) -> BackendError:
        return BackendError(fault, self.url)

    def _key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise self._error(f"environment variable {self.api_key_env} (api_key_env) is not set; set it or "
                              f"pass api_key_env=null for keyless endpoints")
        return key

    def complete(self, conversations: Sequence[Sequence[dict]]) -> list[str]:
        key = self._key()
        if len(conversations) <= 1 or self.max_workers <= 1:
            return [self._complete_one(list(c), key) for c in conversations]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(conversations))) as pool:
            return list(pool.map(lambda c: self._complete_one(list(c), key), conversations))

    def _complete_one(self, messages: list[dict], key: str | None) -> str:
        """One chat: up to max_retries + 1 attempts within max_wait_s of the call's start."""
        def scrub(text: str) -> str:
            return " ".join((text.replace(key, "***") if key else text).split())  # one line, no key

        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens, **self.extra_body}).encode()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        deadline = self._clock() + self.max_wait_s
        attempts = self.max_retries + 1
        last, wait, asked = "no attempt made", 0.0, False
        for attempt in range(attempts):
            if attempt:
                left = deadline - self._clock()
                if wait >= left:
                    why = (f"the endpoint asked to wait {wait:g}s (Retry-After)" if asked
                           else f"the next retry would start after {wait:g}s")
                    raise self._error(f"gave up after {attempt} of {attempts} attempts: {why}, past "
                                      f"max_wait_s={self.max_wait_s:g}s for one call; last error: {last}")
                log.warning("openai backend: attempt %d/%d to %s failed (%s); retrying in %.2fs",
                            attempt, attempts, self.url, last, wait)
                self._sleep(wait)
            left = deadline - self._clock()
            if left <= 0:
                raise self._error(f"gave up after {attempt} of {attempts} attempts: max_wait_s={self.max_wait_s:g}s "
                                  f"for one call passed; last error: {last}")
            limit = min(self.timeout, left)
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            cut = _Cutoff(left)
            try:
                raw, status, retry_after, detail = cut.post(req, limit)
            except _NETWORK_ERRORS as e:
                raw, status, retry_after, detail = None, None, None, _network_fault(e, limit, limit < self.timeout)
            finally:
                cut.cancel()
            if status is None and raw is not None:  # a reply (complete, unless the bound cut it off)
                try:
                    return self._extract(raw, scrub)
                except BackendError:
                    if not cut.fired:
                        raise
            if cut.fired:
                raise self._error(f"gave up during attempt {attempt + 1} of {attempts}: max_wait_s="
                                  f"{self.max_wait_s:g}s for one call passed while the reply was still arriving"
                                  + (f"; last error: {last}" if attempt else ""))
            if status is None:  # a network fault: retried
                last, asked = scrub(detail), False
            elif status == 429 or status >= 500:
                last = f"HTTP {status}" + (f": {scrub(detail)[:200]}" if detail.strip() else "")
                asked = retry_after is not None
            else:
                raise self._error(f"HTTP {status}: {scrub(detail)[:300]} (not retried)")
            backoff = min(self.max_backoff, self.backoff * 2 ** attempt)
            wait = retry_after if retry_after is not None else backoff
        raise self._error(f"failed after {attempts} attempts; last error: {last}")

    def _extract(self, raw: bytes, scrub) -> str:
        try:
            data = json.loads(raw)
        except ValueError:
            excerpt = scrub(raw[:200].decode("utf-8", "replace"))
            raise self._error(f"malformed JSON in the reply: {excerpt!r}") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise self._error(f"the reply has no choices[0].message.content "
                              f"(keys: {sorted(data) if isinstance(data, dict) else type(data).__name__})") from None
        return (content or "").strip() if isinstance(content, str) else ""


_NETWORK_ERRORS = (TimeoutError, socket.timeout, urllib.error.URLError, ConnectionError,
                   http.client.HTTPException, OSError)


def _network_fault(e: BaseException, limit: float, bounded: bool) -> str:
    """A retryable network error in words (a timeout, a refused or dropped connection); `bounded`: the
    attempt's time limit was what was left of max_wait_s, not `timeout`."""
    reason = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"timed out after {limit:.3g}s" + (" (what was left of max_wait_s)" if bounded else "")
    if isinstance(e, urllib.error.URLError):
        return f"connection error: {reason}"
    return f"connection error: {type(e).__name__}: {e}"


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The wait a `Retry-After` header asks for, in seconds (a number, or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _Cutoff:
    """One attempt's POST whose socket is shut down when `seconds` pass (the call's max_wait_s), so a
    reply that keeps trickling in cannot outlast the bound. `post` returns (body or None, HTTP error status
    or None, Retry-After seconds or None, error text)."""

    def __init__(self, seconds: float):
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sock = self._sock
        if sock is not None:
            _shut(sock)

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            fired = self.fired
        if fired:
            _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()

    def post(self, req: urllib.request.Request, timeout: float):
        opener = urllib.request.build_opener(_WatchedHTTPHandler(self), _WatchedHTTPSHandler(self))
        try:
            with opener.open(req, timeout=timeout) as resp:
                return resp.read(), None, None, ""
        except urllib.error.HTTPError as e:
            return None, e.code, retry_after_seconds(e.headers.get("Retry-After") if e.headers else None), \
                _safe_read(e)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Watched:
    """A urllib handler whose connections hand their socket to a `_Cutoff` once connected."""

    def __init__(self, cutoff: _Cutoff):
        super().__init__()
        self.cutoff = cutoff

    def do_open(self, http_class, req, **kwargs):
        cutoff = self.cutoff

        class Conn(http_class):
            def connect(self):
                super().connect()
                cutoff.attach(self.sock)
        return super().do_open(Conn, req, **kwargs)


class _WatchedHTTPHandler(_Watched, urllib.request.HTTPHandler):
    pass


class _WatchedHTTPSHandler(_Watched, urllib.request.HTTPSHandler):
    pass


def _safe_read(e: urllib.error.HTTPError) -> str:
    try:
        return e.read(300).decode("utf-8", "replace")
    except Exception:
        return ""
