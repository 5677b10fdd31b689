"""A prompt rewriter that asks any OpenAI-compatible chat-completions endpoint: vLLM, Ollama,
DashScope's compatible mode, a hosted API.

Bounded: the whole rewrite (every attempt, every back-off) ends within `timeout` seconds of
the call; a connection error, a timeout, HTTP 429 or 5xx is retried up to `attempts` times in
all while time remains. Any other outcome that is not a usable reply gives the original
prompt back with a note.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx

from imagesynth.prompts.instructions import style_for, system_prompt
from imagesynth.prompts.rewriter import Rewrite, fallback, guarded
from imagesynth.prompts.validate import accept, detect_language

log = logging.getLogger("imagesynth.prompts")

CONNECT_TIMEOUT = 5.0  # a host that does not answer at all should leave time for a retry
MAX_REPLY_BYTES = 1 << 20
MAX_TOKENS = 2048
TEMPERATURE = 0.3  # some variety, but faithful to the user's prompt


class _OutOfTime(Exception):
    pass


def _redacted(url: str) -> str:
    try:
        return str(httpx.URL(url).copy_with(username=None, password=None))
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"


def _retry_after(headers: httpx.Headers) -> float | None:
    try:
        value = float(headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def reply_text(payload: bytes) -> str | None:
    """choices[0].message.content of a chat-completions reply, or None if there is none."""
    try:
        data: Any = json.loads(payload)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if isinstance(content, list):  # content parts, as some servers send
        content = (
            "".join(part.get("text", "") for part in content if isinstance(part, dict)) or None
        )
    return content if isinstance(content, str) else None


class OpenAICompatibleRewriter:
    """Rewrites prompts with `model` at `base_url` (the part before /chat/completions, e.g.
    http://127.0.0.1:8000/v1 for vLLM, http://127.0.0.1:11434/v1 for Ollama,
    https://dashscope.aliyuncs.com/compatible-mode/v1)."""

    available = True

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 20.0,
        attempts: int = 2,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if timeout <= 0 or attempts < 1 or backoff < 0:
            raise ValueError("timeout must be > 0, attempts >= 1 and backoff >= 0")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, transport=transport)

    def describe(self) -> str:
        return (
            f"prompt_extend via OpenAI-compatible endpoint {_redacted(self.base_url)}, "
            f"model {self.model} (timeout {self.timeout:g} s, {self.attempts} attempts)"
        )

    def close(self) -> None:
        self._client.close()

    def request_body(self, prompt: str, *, model: str, max_chars: int) -> dict[str, Any]:
        """The chat-completions request for rewriting `prompt` for image model `model`."""
        system = system_prompt(style_for(model), detect_language(prompt), max_chars)
        return {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": prompt},
            ],
            # Tokens rarely outnumber characters, so this never cuts a reply that fits.
            "max_tokens": min(MAX_TOKENS, max_chars + 64),
            "temperature": TEMPERATURE,
            "stream": False,
        }

    def rewrite(self, prompt: str, *, model: str, max_chars: int) -> Rewrite:
        return guarded(self._rewrite, prompt, model=model, max_chars=max_chars)

    def _rewrite(self, prompt: str, *, model: str, max_chars: int) -> Rewrite:
        deadline = time.monotonic() + self.timeout
        body = self.request_body(prompt, model=model, max_chars=max_chars)
        problem = "no time left"
        attempt = 0
        while attempt < self.attempts:
            attempt += 1
            retry_after = None
            try:
                status, payload, retry_after = self._post(body, deadline)
            except (httpx.TimeoutException, _OutOfTime):
                problem = f"no reply within {self.timeout:g} s"
            except httpx.TransportError as exc:
                problem = f"could not reach the endpoint ({type(exc).__name__})"
            else:
                if status == 200:
                    content = reply_text(payload)
                    if content is None:
                        return fallback(prompt, "the rewriter endpoint sent an unreadable reply")
                    return accept(prompt, content, max_chars=max_chars)
                problem = f"the rewriter endpoint answered HTTP {status}"
                if status != 429 and status < 500:
                    return fallback(prompt, problem)  # 4xx: a retry would get the same
            delay = retry_after if retry_after is not None else self.backoff * 2 ** (attempt - 1)
            if attempt >= self.attempts or time.monotonic() + delay >= deadline:
                break
            log.info("prompt rewrite attempt %d failed (%s); retrying", attempt, problem)
            time.sleep(delay)
        return fallback(prompt, f"rewrite failed after {attempt} attempt(s): {problem}")

    def _post(self, body: dict[str, Any], deadline: float) -> tuple[int, bytes, float | None]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _OutOfTime
        timeout = httpx.Timeout(remaining, connect=min(remaining, CONNECT_TIMEOUT))
        with self._client.stream("POST", self.url, json=body, timeout=timeout) as response:
            if response.status_code != 200:
                return response.status_code, b"", _retry_after(response.headers)
            chunks, size = [], 0
            # httpx's read timeout is per read; a server trickling bytes must still stop here.
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    return 200, b"", None
                if time.monotonic() > deadline:
                    raise _OutOfTime
                chunks.append(chunk)
            return 200, b"".join(chunks), None
