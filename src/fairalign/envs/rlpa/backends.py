"""Chat-completion backends shared by LLM-simulated users and the LLM judge.

Both expose `complete(conversations: list[list[dict]]) -> list[str]` (one reply per chat):
- `HFChat`: a local transformers causal LM + tokenizer, batched left-padded `generate`.
- `OpenAIChat`: any OpenAI-compatible `/chat/completions` endpoint over the stdlib (urllib),
  with a timeout, bounded retries (timeouts, connection errors, HTTP 429/5xx) and exponential
  backoff. The API key is read from the environment variable named by `api_key_env` at request
  time; it is never stored on the object, logged, or put into an exception message.

Simplifications: no streaming; HF sampling uses torch's global RNG (seed it outside for
reproducibility); OpenAI requests of a batch run in a small thread pool.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from fairalign.errors import EnvironmentFault

log = logging.getLogger(__name__)


class BackendError(EnvironmentFault):
    """A chat backend failed (after retries, or with a non-retryable error)."""


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

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout: float = 30.0, max_retries: int = 3, backoff: float = 0.5,
                 max_backoff: float = 8.0, temperature: float = 0.7, max_tokens: int = 128,
                 max_workers: int = 8, extra_body: dict | None = None):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env = model, api_key_env
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.temperature, self.max_tokens = temperature, max_tokens
        self.max_workers, self.extra_body = max_workers, dict(extra_body or {})

    def __repr__(self) -> str:  # never the key itself
        return f"OpenAIChat(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def _key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise BackendError(f"openai backend: environment variable {self.api_key_env} (api_key_env) "
                               f"is not set; set it or pass api_key_env=None for keyless endpoints")
        return key

    def complete(self, conversations: Sequence[Sequence[dict]]) -> list[str]:
        key = self._key()
        if len(conversations) <= 1 or self.max_workers <= 1:
            return [self._complete_one(list(c), key) for c in conversations]
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(conversations))) as pool:
            return list(pool.map(lambda c: self._complete_one(list(c), key), conversations))

    def _complete_one(self, messages: list[dict], key: str | None) -> str:
        def scrub(text: str) -> str:
            return text.replace(key, "***") if key else text

        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens, **self.extra_body}).encode()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        attempts = self.max_retries + 1
        last = "no attempt made"
        for attempt in range(attempts):
            if attempt:
                delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                log.warning("openai backend: attempt %d/%d to %s failed (%s); retrying in %.2fs",
                            attempt, attempts, self.url, last, delay)
                time.sleep(delay)
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as e:
                detail = scrub(_safe_read(e))
                if e.code == 429 or e.code >= 500:
                    last = f"HTTP {e.code}"
                    continue
                raise BackendError(f"openai backend: {self.url} returned HTTP {e.code}: {detail}") from None
            except (TimeoutError, socket.timeout):
                last = f"timed out after {self.timeout}s"
                continue
            except urllib.error.URLError as e:
                reason = e.reason
                last = (f"timed out after {self.timeout}s" if isinstance(reason, (TimeoutError, socket.timeout))
                        else scrub(f"connection error: {reason}"))
                continue
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                last = scrub(f"connection error: {type(e).__name__}: {e}")
                continue
            return self._extract(raw, scrub)
        raise BackendError(f"openai backend: {self.url} failed after {attempts} attempts; last error: {last}")

    def _extract(self, raw: bytes, scrub) -> str:
        try:
            data = json.loads(raw)
        except ValueError:
            excerpt = scrub(raw[:200].decode("utf-8", "replace"))
            raise BackendError(f"openai backend: malformed JSON in the response from {self.url}: "
                               f"{excerpt!r}") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"openai backend: response from {self.url} has no choices[0].message.content "
                               f"(keys: {sorted(data) if isinstance(data, dict) else type(data).__name__})") from None
        return (content or "").strip() if isinstance(content, str) else ""


def _safe_read(e: urllib.error.HTTPError) -> str:
    try:
        return e.read(300).decode("utf-8", "replace")
    except Exception:
        return ""
