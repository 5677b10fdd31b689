"""A prompt rewriter that runs a local transformers causal LM from a folder (e.g. a downloaded
Qwen2.5-1.5B-Instruct): no network, no hub.

The model loads once, lazily (or at startup through `load()`), and generates greedily under a
lock, one prompt at a time, with `max_new_tokens` bounded by the prompt limit and generation
stopped at the timeout (transformers' `max_time`). torch and transformers are imported only
when the model loads, so building this rewriter costs nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from imagesynth.causal_lm import load_causal_lm
from imagesynth.prompts.instructions import plain_prompt, style_for, system_prompt
from imagesynth.prompts.rewriter import Rewrite, RewriterConfigError, fallback, guarded
from imagesynth.prompts.validate import accept, detect_language

log = logging.getLogger("imagesynth.prompts")

MAX_NEW_TOKENS = 512


def encode(tokenizer: Any, prompt: str, *, model: str, max_chars: int) -> dict[str, Any]:
    """The tokenized rewrite request for image model `model`: the tokenizer's chat template
    with a system message when it has one, else instructions and prompt as plain text."""
    language = detect_language(prompt)
    system = system_prompt(style_for(model), language, max_chars)
    if not getattr(tokenizer, "chat_template", None):
        return dict(tokenizer(plain_prompt(system, prompt, language), return_tensors="pt"))
    conversations = (
        [{"role": "system", "content": system}, {"role": "user", "content": prompt}],
        # Templates without a system role (e.g. Gemma's) get the instructions inline.
        [{"role": "user", "content": f"{system}\n\n{prompt}"}],
    )
    for n, messages in enumerate(conversations):
        try:
            encoded = tokenizer.apply_chat_template(
                messages,
                add_generation_prompt=True,
                return_dict=True,
                return_tensors="pt",
                enable_thinking=False,  # Qwen3-style templates: answer without <think>
            )
            return dict(encoded)
        except Exception:
            if n == len(conversations) - 1:
                raise
    raise AssertionError("unreachable")


class LocalLMRewriter:
    """Rewrites prompts with the causal LM saved (`save_pretrained`) in folder `path`."""

    available = True

    def __init__(
        self,
        path: Path,
        *,
        device: str = "cpu",
        timeout: float = 20.0,
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

    def describe(self) -> str:
        return (
            f"prompt_extend via local model {self.path} on {self.device} "
            f"(timeout {self.timeout:g} s)"
        )

    def close(self) -> None:
        with self._lock:
            self._model = self._tokenizer = None

    def load(self) -> None:
        """Load the model now (idempotent). Raises RewriterConfigError when it cannot load;
        call it at startup so the first rewrite does not pay for loading."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._model is not None:
            return
        self._tokenizer, self._model = load_causal_lm(
            self.path, self.device, what="the rewriter model", error=RewriterConfigError
        )

    def rewrite(self, prompt: str, *, model: str, max_chars: int) -> Rewrite:
        return guarded(self._rewrite, prompt, model=model, max_chars=max_chars)

    def _rewrite(self, prompt: str, *, model: str, max_chars: int) -> Rewrite:
        started = time.monotonic()
        if self._load_error is not None:
            return fallback(prompt, self._load_error)
        if not self._lock.acquire(timeout=self.timeout):
            return fallback(prompt, f"the rewriter was busy for {self.timeout:g} s")
        try:
            try:
                self._load_locked()
            except Exception as exc:
                log.exception("prompt rewriter model failed to load")
                self._load_error = f"the rewriter model failed to load ({type(exc).__name__})"
                return fallback(prompt, self._load_error)
            remaining = self.timeout - (time.monotonic() - started)
            if remaining <= 0:
                return fallback(prompt, f"no rewrite within {self.timeout:g} s")
            try:
                reply = self._generate(prompt, model=model, max_chars=max_chars, limit=remaining)
            except Exception as exc:
                log.exception("prompt rewriter generation failed")
                return fallback(prompt, f"rewriter error: {type(exc).__name__}")
        finally:
            self._lock.release()
        if time.monotonic() - started >= self.timeout:
            # max_time stopped generation mid-reply: treat it as the timeout it is.
            return fallback(prompt, f"no rewrite within {self.timeout:g} s")
        return accept(prompt, reply, max_chars=max_chars)

    def _generate(self, prompt: str, *, model: str, max_chars: int, limit: float) -> str:
        import torch
        from transformers import GenerationConfig

        lm, tokenizer = self._model, self._tokenizer
        inputs = encode(tokenizer, prompt, model=model, max_chars=max_chars)
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
            max_new_tokens=min(self.max_new_tokens, max_chars + 16),
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
