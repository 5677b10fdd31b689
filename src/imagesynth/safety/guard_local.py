"""A prompt guard that runs a local transformers guard model from a folder (e.g. a downloaded
Qwen3Guard-Gen-0.6B): no network, no hub.

It needs torch, so it runs only in worker processes (runtime.py): the worker asks it about a
task's prompt before generation. The model's own chat template carries its safety policy
(Qwen3Guard-Gen's and Llama Guard's do), so the request is the prompt as the user message.
The model loads once (at worker startup through `load()`, or lazily), and generates greedily
under a lock, a few tokens, stopped at the time budget (transformers' `max_time`).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from imagesynth.causal_lm import load_causal_lm
from imagesynth.safety.guard import GuardConfigError, GuardVerdict, failed, parse_reply

log = logging.getLogger("imagesynth.safety")

MAX_NEW_TOKENS = 32  # "Safety: Unsafe\nCategories: Violent" is about a dozen tokens


def encode(tokenizer: Any, text: str) -> dict[str, Any]:
    """The tokenized request: the guard's chat template around `text` as the user message."""
    if not getattr(tokenizer, "chat_template", None):
        raise GuardConfigError("the guard model's tokenizer has no chat template")
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
        enable_thinking=False,  # Qwen3-style templates: answer without <think>
    )
    return dict(encoded)


class LocalGuard:
    """Classifies prompts with the guard model saved (`save_pretrained`) in folder `path`."""

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        timeout: float = 3.0,
        max_new_tokens: int = MAX_NEW_TOKENS,
    ) -> None:
        if timeout <= 0 or max_new_tokens < 1:
            raise ValueError("timeout must be > 0 and max_new_tokens >= 1")
        # Absolute: a relative path shaped like org/name would send transformers to the hub.
        self.path = Path(path).expanduser().absolute()
        self.device = device
        self.timeout = timeout
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._load_error: str | None = None

    @property
    def name(self) -> str:
        return f"local:{self.path.name}"

    def describe(self) -> str:
        return (
            f"prompt guard: local model {self.path} on {self.device}, in the workers before "
            f"generation (budget {self.timeout:g} s)"
        )

    def close(self) -> None:
        with self._lock:
            self._model = self._tokenizer = None

    def load(self) -> None:
        """Load the model now (idempotent). Raises GuardConfigError when it cannot; then every
        verdict is an error, which the fail policy decides."""
        with self._lock:
            try:
                self._load_locked()
            except Exception as exc:
                self._load_error = f"the guard model failed to load ({type(exc).__name__})"
                raise

    def _load_locked(self) -> None:
        if self._model is not None:
            return
        tokenizer, model = load_causal_lm(
            self.path, self.device, what="the guard model", error=GuardConfigError
        )
        if not getattr(tokenizer, "chat_template", None):
            raise GuardConfigError(f"the guard model in {self.path} has no chat template")
        self._tokenizer, self._model = tokenizer, model

    def classify(self, text: str) -> GuardVerdict:
        started = time.monotonic()
        try:
            return self._classify(text, started)
        except Exception as exc:  # a guard must never fail the task by a bug of ours
            log.exception("prompt guard failed")
            return failed(f"guard error: {type(exc).__name__}", started)

    def _classify(self, text: str, started: float) -> GuardVerdict:
        if self._load_error is not None:
            return failed(self._load_error, started)
        if not self._lock.acquire(timeout=self.timeout):
            return failed(f"the guard was busy for {self.timeout:g} s", started)
        try:
            try:
                self._load_locked()
            except Exception as exc:
                log.exception("prompt guard model failed to load")
                self._load_error = f"the guard model failed to load ({type(exc).__name__})"
                return failed(self._load_error, started)
            remaining = self.timeout - (time.monotonic() - started)
            if remaining <= 0:
                return failed(f"no answer within {self.timeout:g} s", started)
            reply = self._generate(text, limit=remaining)
        finally:
            self._lock.release()
        elapsed = time.monotonic() - started
        if elapsed >= self.timeout:
            # max_time stopped generation mid-answer: treat it as the timeout it is.
            return failed(f"no answer within {self.timeout:g} s", started)
        parsed = parse_reply(reply)
        if parsed is None:
            return failed("the guard model's reply has no verdict", started)
        return GuardVerdict(parsed[0], parsed[1], elapsed=elapsed)

    def _generate(self, text: str, *, limit: float) -> str:
        import torch
        from transformers import GenerationConfig

        lm, tokenizer = self._model, self._tokenizer
        inputs = encode(tokenizer, text)
        input_ids = inputs["input_ids"].to(lm.device)
        attention_mask = inputs.get("attention_mask")
        eos = lm.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = eos[0] if isinstance(eos, list) else eos
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=self.max_new_tokens,
            max_time=limit,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        with torch.inference_mode():
            output = lm.generate(
                input_ids=input_ids,
                attention_mask=None if attention_mask is None else attention_mask.to(lm.device),
                generation_config=config,
            )
        return str(tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True))
