"""The optional second layer for prompts: a guard model, for what the term lists miss.

A guard classifies one prompt and answers a `GuardVerdict` (safe, unsafe or controversial,
with the categories it saw) within its time budget, or a verdict with an `error` when it
could not answer in time or in a readable form. It never raises. `GuardPolicy` turns the
verdict into a decision: unsafe blocks, controversial blocks only when asked, a verdict whose
every category is switched off (IMAGESYNTH_SAFETY_CATEGORIES_OFF) passes, and an error passes
(fail open, the default) or blocks (fail closed).

Where each kind runs (docs/architecture.md): a remote endpoint (`OpenAIGuard`, here) screens
at submit time in the API process, so a blocked prompt gets 400 DataInspectionFailed; a local
transformers model (`safety/guard_local.py`) needs torch, which an API process never loads, so
it screens in the worker processes before generation and fails the task with
DataInspectionFailed.

Guard models answer in a few shapes; `parse_reply` reads Qwen3Guard-Gen's
("Safety: Unsafe\\nCategories: Violent") and Llama Guard's ("unsafe\\nS1,S10").
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

from imagesynth.errors import ImageSynthError
from imagesynth.safety.terms import category_name

log = logging.getLogger("imagesynth.safety")

Safety = Literal["safe", "unsafe", "controversial"]
GuardApi = Literal["chat", "moderations"]

CONNECT_TIMEOUT = 2.0
MAX_REPLY_BYTES = 1 << 16
MAX_TOKENS = 64  # "Safety: ...\nCategories: ..." is a few tokens; a longer reply is not one

_SAFETY = re.compile(r"safety\s*[:：]\s*(safe|unsafe|controversial)\b", re.IGNORECASE)
_CATEGORIES = re.compile(r"categor(?:y|ies)\s*[:：]\s*([^\n]*)", re.IGNORECASE)
_THINK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_NONE = frozenset({"", "none", "n/a", "null", "无"})


class GuardConfigError(ImageSynthError):
    """The prompt guard is misconfigured."""


@dataclass(frozen=True)
class GuardVerdict:
    """A guard's answer on one prompt: `safety` and the `categories` it named, or no safety
    and the `error` that kept it from answering. `elapsed` is in seconds."""

    safety: Safety | None
    categories: tuple[str, ...] = ()
    error: str | None = None
    elapsed: float = field(default=0.0, compare=False)


def failed(error: str, started: float) -> GuardVerdict:
    """The verdict of a guard that could not answer (logged, without the prompt)."""
    log.warning("prompt guard gave no verdict: %s", error)
    return GuardVerdict(safety=None, error=error, elapsed=time.monotonic() - started)


def _split_categories(text: str) -> tuple[str, ...]:
    parts = (p.strip().strip(".") for p in re.split(r"[,，;；、]", text))
    return tuple(p for p in parts if p.casefold() not in _NONE)


def parse_reply(text: str) -> tuple[Safety, tuple[str, ...]] | None:
    """The safety and categories in a guard model's reply, or None if it has none.

    "Safety: Unsafe\\nCategories: Violent, Sexual Content" (Qwen3Guard-Gen; "Categories: None"
    when safe), or a first line "safe"/"unsafe" and the categories on the next (Llama Guard:
    "unsafe\\nS1,S10"). A <think> block is skipped."""
    text = _THINK.sub("", text).strip()
    found = _SAFETY.search(text)
    if found is not None:
        safety: Safety = found.group(1).lower()  # type: ignore[assignment]
        listed = _CATEGORIES.search(text, found.end())
        return safety, _split_categories(listed.group(1)) if listed else ()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0].lower() in ("safe", "unsafe"):
        first: Safety = lines[0].lower()  # type: ignore[assignment]
        return first, _split_categories(lines[1]) if len(lines) > 1 else ()
    return None


@dataclass(frozen=True)
class GuardPolicy:
    """What a verdict means: block or pass.

    fail_closed: a guard that gave no verdict blocks (default: it passes; the term lists
    and the image classifier still apply, and a guard outage does not refuse every prompt).
    block_controversial: "controversial" blocks like "unsafe" (Qwen3Guard's strict mode).
    categories_off: normalized categories (terms.category_name) that do not block; an unsafe
    verdict blocks when it names no category or one not switched off."""

    fail_closed: bool = False
    block_controversial: bool = False
    categories_off: frozenset[str] = frozenset()

    def blocks(self, verdict: GuardVerdict) -> bool:
        if verdict.safety is None:
            return self.fail_closed
        if verdict.safety == "safe":
            return False
        if verdict.safety == "controversial" and not self.block_controversial:
            return False
        named = {category_name(c) for c in verdict.categories} - {""}
        return not named or bool(named - self.categories_off)


class PromptGuard(Protocol):
    """Classifies prompts. Implementations are thread-safe, keep to their time budget and
    never raise."""

    @property
    def name(self) -> str:
        """Short name for the audit log ("openai:<model>", "local:<folder>")."""
        ...

    def describe(self) -> str:
        """One line for the startup log."""
        ...

    def load(self) -> None:
        """Get ready (load weights); a guard that cannot load answers errors afterwards."""
        ...

    def classify(self, text: str) -> GuardVerdict:
        """The guard's verdict on prompt `text`."""
        ...

    def close(self) -> None:
        """Release connections or weights."""
        ...


@dataclass(frozen=True)
class Guard:
    """A prompt guard and the policy that reads its verdicts."""

    model: PromptGuard
    policy: GuardPolicy

    def check(self, text: str) -> tuple[GuardVerdict, bool]:
        """The guard's verdict on `text` and whether the policy blocks it."""
        verdict = self.model.classify(text)
        return verdict, self.policy.blocks(verdict)


def moderation_verdict(payload: Any) -> tuple[Safety, tuple[str, ...]] | None:
    """results[0] of an OpenAI-style /moderations reply as safety and the flagged
    categories, or None if it has no such result."""
    try:
        result = payload["results"][0]
        flagged = result["flagged"]
        categories = result.get("categories") or {}
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    if not isinstance(flagged, bool) or not isinstance(categories, dict):
        return None
    named = tuple(str(name) for name, on in categories.items() if on is True)
    return ("unsafe" if flagged else "safe"), named


def _redacted(url: str) -> str:
    try:
        return str(httpx.URL(url).copy_with(username=None, password=None))
    except (httpx.InvalidURL, TypeError):
        return "<invalid URL>"


class _OutOfTime(Exception):
    pass


class OpenAIGuard:
    """A guard behind an OpenAI-compatible API at `base_url` (the part before
    /chat/completions or /moderations, e.g. http://127.0.0.1:8000/v1 for vLLM).

    api "chat": a guard model's chat endpoint (vLLM serving Qwen3Guard-Gen or Llama Guard),
    the prompt as the user message, its reply read by parse_reply. api "moderations": POST
    /moderations {model, input}, flagged and categories read from results[0]. One request per
    prompt, ended at `timeout` seconds however the server trickles its answer."""

    def __init__(
        self,
        base_url: str,
        model: str | None,
        *,
        api: GuardApi = "chat",
        api_key: str | None = None,
        timeout: float = 3.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if api == "chat" and not model:
            raise GuardConfigError("a chat-endpoint guard needs IMAGESYNTH_GUARD_MODEL")
        self.base_url = base_url.rstrip("/")
        self.api = api
        self.url = f"{self.base_url}/{'chat/completions' if api == 'chat' else 'moderations'}"
        self.model = model
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, transport=transport)

    @property
    def name(self) -> str:
        return f"{self.api}:{self.model or 'default'}"

    def describe(self) -> str:
        return (
            f"prompt guard: {self.api} endpoint {_redacted(self.base_url)}, model "
            f"{self.model or '(default)'}, at submit (budget {self.timeout:g} s)"
        )

    def load(self) -> None:
        pass

    def close(self) -> None:
        self._client.close()

    def request_body(self, text: str) -> dict[str, Any]:
        if self.api == "moderations":
            body: dict[str, Any] = {"input": text}
            if self.model:
                body["model"] = self.model
            return body
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "stream": False,
        }

    def classify(self, text: str) -> GuardVerdict:
        started = time.monotonic()
        try:
            status, payload = self._post(self.request_body(text), started + self.timeout)
        except (httpx.TimeoutException, _OutOfTime):
            return failed(f"no answer within {self.timeout:g} s", started)
        except httpx.HTTPError as exc:
            return failed(f"could not reach the guard ({type(exc).__name__})", started)
        except Exception as exc:  # a guard must never fail the request by a bug of ours
            log.exception("prompt guard failed")
            return failed(f"guard error: {type(exc).__name__}", started)
        if status != 200:
            return failed(f"the guard answered HTTP {status}", started)
        try:
            data = json.loads(payload)
        except ValueError:
            return failed("the guard sent an unreadable reply", started)
        parsed = moderation_verdict(data) if self.api == "moderations" else _chat_verdict(data)
        if parsed is None:
            return failed("the guard's reply has no verdict", started)
        safety, categories = parsed
        return GuardVerdict(safety, categories, elapsed=time.monotonic() - started)

    def _post(self, body: dict[str, Any], deadline: float) -> tuple[int, bytes]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _OutOfTime
        timeout = httpx.Timeout(remaining, connect=min(remaining, CONNECT_TIMEOUT))
        with self._client.stream("POST", self.url, json=body, timeout=timeout) as response:
            if response.status_code != 200:
                return response.status_code, b""
            chunks, size = [], 0
            # httpx's read timeout is per read; a server trickling bytes must still stop here.
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_REPLY_BYTES:
                    return 200, b""  # no verdict is that long: read as unreadable
                if time.monotonic() > deadline:
                    raise _OutOfTime
                chunks.append(chunk)
            return 200, b"".join(chunks)


def _chat_verdict(data: Any) -> tuple[Safety, tuple[str, ...]] | None:
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return parse_reply(content) if isinstance(content, str) else None
