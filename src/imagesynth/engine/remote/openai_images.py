"""`backend = "openai-images"`: generation handed to a server that speaks the OpenAI Images API
(SGLang-Diffusion's `sglang serve`, vLLM-Omni's `vllm serve --omni`, LocalAI, another
imagesynth). docs/remote-engines.md has the catalog keys and the failure policy.

The worker claims and leases the task as for any engine; only the call differs:

- Every request carries a seed (SGLang-Diffusion's default seed is a constant) and asks for
  `b64_json`. Unless the catalog says the server gives image i of a request seed + i
  (`remote_seed_offsets`), each image is a request of its own, n = 1, with its own seed, so
  image i is always what seed + i gives alone, as with the in-process engines.
- Steps, guidance and the negative prompt go as vLLM-Omni's extension fields
  (`num_inference_steps`, `guidance_scale`, `negative_prompt`), which imagesynth's own front
  takes too.
- A connection failure, a timeout, a 429 or a 5xx is retried `remote_retries` times with
  exponential backoff (1, 2, 4, ... s, or the server's Retry-After), then the call fails with
  RemoteUnavailable; another 4xx fails at once with RemoteRejected (DataInspectionFailed for
  the server's `moderation_blocked`); an answer without the images asked for fails with
  RemoteBadReply. The worker turns each into the task's failure code.
- There is no step progress (the task's progress says `reported: false`). Cancellation is
  checked every quarter second while a request is out: a cancelled task abandons it.
"""

from __future__ import annotations

import base64
import io
import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import httpx
from PIL import Image, UnidentifiedImageError

from imagesynth.engine.base import (
    Capabilities,
    EngineFailure,
    EngineSpec,
    GenerationBatch,
    PreviewCallback,
    RemoteEndpoint,
    StepCallback,
)
from imagesynth.errors import FailureCode

log = logging.getLogger(__name__)

CANCEL_CHECK_SECONDS = 0.25
_RETRIED_STATUSES = (408, 409, 425, 429, 500, 502, 503, 504)


class OpenAIImagesEngine:
    capabilities = Capabilities(progress=False, cancel=True, previews=False)

    def __init__(self, spec: EngineSpec) -> None:
        if spec.remote is None:
            raise ValueError("backend openai-images needs spec.remote")
        self.spec = spec
        self.remote: RemoteEndpoint = spec.remote
        self._http: httpx.Client | None = None
        # Requests run on threads of their own, so that the caller can abandon one (which
        # then finishes unread beside the next).
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="remote-engine")
        self.backoff = 1.0  # seconds before the first retry; doubles each time

    def load(self) -> None:
        headers = {"Authorization": f"Bearer {self.remote.api_key}"} if self.remote.api_key else {}
        self._http = httpx.Client(
            base_url=self.remote.endpoint.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(self.remote.timeout, connect=min(10.0, self.remote.timeout)),
        )

    def generate(
        self,
        batch: GenerationBatch,
        on_step: StepCallback,
        on_preview: PreviewCallback | None = None,
    ) -> list[Image.Image]:
        if batch.init_image is not None or batch.style_image is not None:
            raise EngineFailure(FailureCode.REMOTE_REJECTED, "a remote engine takes no reference")
        images: list[Image.Image] = []
        for prompt, negative, seeds in self._requests(batch):
            body: dict[str, Any] = {
                "model": self.remote.model,
                "prompt": prompt,
                "n": len(seeds),
                "size": f"{batch.width}x{batch.height}",
                "response_format": "b64_json",
                "seed": seeds[0],
                "num_inference_steps": batch.steps,
                "guidance_scale": batch.guidance,
            }
            if negative:
                body["negative_prompt"] = negative
            images += self._call(body, batch, on_step)
        return images

    def _requests(self, batch: GenerationBatch) -> list[tuple[str, str, tuple[int, ...]]]:
        """(prompt, negative prompt, seeds) per request: one per image, or one for the whole
        call when the server offsets seeds itself and every image shares the prompts."""
        prompts = batch.prompts or (batch.prompt,) * len(batch.seeds)
        negatives = batch.negative_prompts or (batch.negative_prompt,) * len(batch.seeds)
        consecutive = all(b == a + 1 for a, b in zip(batch.seeds, batch.seeds[1:], strict=False))
        if (
            self.remote.seed_offsets
            and consecutive
            and len(set(prompts)) == 1
            and len(set(negatives)) == 1
        ):
            return [(prompts[0], negatives[0], batch.seeds)]
        return [(p, q, (s,)) for p, q, s in zip(prompts, negatives, batch.seeds, strict=True)]

    def _call(
        self, body: dict[str, Any], batch: GenerationBatch, on_step: StepCallback
    ) -> list[Image.Image]:
        attempt = 0
        while True:
            outcome = self._abandonable(lambda: self._post(body), batch, on_step)
            if isinstance(outcome, httpx.Response) and outcome.status_code == 200:
                return _images(outcome, body["n"], batch.width, batch.height)
            retry_after = _retry_after(outcome) if isinstance(outcome, httpx.Response) else None
            if isinstance(outcome, httpx.Response) and outcome.status_code not in _RETRIED_STATUSES:
                raise _refusal(outcome)
            if attempt >= self.remote.retries:
                raise EngineFailure(
                    FailureCode.REMOTE_UNAVAILABLE,
                    f"{self.remote.endpoint}: {_describe(outcome)} after {attempt + 1} attempts",
                )
            attempt += 1
            delay = retry_after or self.backoff * 2 ** (attempt - 1) * (0.8 + 0.4 * random.random())
            log.warning(
                "remote engine %s: %s; retry %d/%d in %.1fs",
                self.remote.endpoint,
                _describe(outcome),
                attempt,
                self.remote.retries,
                delay,
            )
            self._sleep(delay, batch, on_step)

    def _post(self, body: dict[str, Any]) -> httpx.Response | httpx.HTTPError:
        assert self._http is not None, "load() first"
        try:
            response = self._http.post("/images/generations", json=body)
            response.read()
            return response
        except httpx.HTTPError as exc:
            return exc

    def _abandonable(
        self,
        work: Callable[[], httpx.Response | httpx.HTTPError],
        batch: GenerationBatch,
        on_step: StepCallback,
    ) -> httpx.Response | httpx.HTTPError:
        """`work()` on the request thread, asking on_step (which raises to stop) every
        CANCEL_CHECK_SECONDS; a stop leaves the request to finish unread."""
        future: Future[httpx.Response | httpx.HTTPError] = self._pool.submit(work)
        while True:
            try:
                return future.result(timeout=CANCEL_CHECK_SECONDS)
            except FutureTimeout:
                on_step(0, batch.steps)  # may raise: the request is abandoned

    def _sleep(self, seconds: float, batch: GenerationBatch, on_step: StepCallback) -> None:
        wake = threading.Event()
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            wake.wait(min(left, CANCEL_CHECK_SECONDS))
            on_step(0, batch.steps)


def _images(response: httpx.Response, n: int, width: int, height: int) -> list[Image.Image]:
    try:
        data = response.json()["data"]
        images = []
        for item in data[:n]:
            with Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))) as image:
                images.append(image.convert("RGB"))
    except (ValueError, KeyError, TypeError, UnidentifiedImageError) as exc:
        raise EngineFailure(FailureCode.REMOTE_BAD_REPLY, f"unreadable answer: {exc}") from None
    if len(images) != n:
        raise EngineFailure(FailureCode.REMOTE_BAD_REPLY, f"{len(images)} images for n = {n}")
    return [_fit(image, width, height) for image in images]


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Servers round sizes to their pipeline's multiple: scale back to the size asked for."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _refusal(response: httpx.Response) -> EngineFailure:
    message = _server_message(response)
    code = FailureCode.REMOTE_REJECTED
    if "moderation_blocked" in response.text:
        code = FailureCode.DATA_INSPECTION
    return EngineFailure(code, f"{response.status_code}: {message}")


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "message" in error:
        return str(error["message"])[:300]
    return str(body.get("detail", body) if isinstance(body, dict) else body)[:300]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return min(float(response.headers.get("retry-after", "")), 60.0)
    except ValueError:
        return None


def _describe(outcome: httpx.Response | httpx.HTTPError) -> str:
    if isinstance(outcome, httpx.Response):
        return f"HTTP {outcome.status_code}"
    return f"{type(outcome).__name__}: {outcome}"
