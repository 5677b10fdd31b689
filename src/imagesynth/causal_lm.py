"""Loading a local transformers causal LM, as the prompt rewriter and the prompt guard both do:
from a folder only (never the hub), float32 on the CPU, the checkpoint's dtype elsewhere.

torch and transformers are imported inside, so importing this module stays cheap; only worker
processes call it (docs/architecture.md).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def load_causal_lm(
    path: Path, device: str, *, what: str, error: type[Exception]
) -> tuple[Any, Any]:
    """(tokenizer, model) of the causal LM saved (`save_pretrained`) in folder `path`, on
    `device` and in eval mode. Raises `error` naming `what` ("the guard model") when the
    folder holds no loadable model."""
    if not (path / "config.json").is_file():
        raise error(f"no transformers model in {path} (no config.json)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # float32 on the CPU (bf16 matmuls are slow there); the checkpoint's dtype on GPUs.
        dtype: Any = torch.float32 if device == "cpu" else "auto"
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise error(f"cannot load {what} in {path}: {exc}") from exc
    model.to(device)  # type: ignore[arg-type]  # transformers' hint wants a dtype
    model.eval()
    log.info("%s %s loaded in %.1f s", what, path, time.monotonic() - started)
    return tokenizer, model
