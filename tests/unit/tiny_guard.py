"""Guards for tests, built offline. A tiny Qwen3 causal LM (Qwen3Guard-Gen's architecture)
with a locally trained tokenizer, whose greedy answer to any prompt is a guard verdict chosen
by the test.

The trick of tiny_lm.py: attention and MLP outputs zeroed, so each position's logits depend on
its own token only; the chat template's last token ("\\n" after "assistant") leads to the
reply's first token, each reply token to the next, the last to <|im_end|>. A reply must not
repeat a token, so its labels ("Safety:", "\\nCategories:") are added tokens of their own.

And GuardServer, a tiny OpenAI-compatible guard endpoint on a free local port.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.unit.tiny_lm import save_chain_model

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LABELS = ["Safety:", "\nCategories:"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HIDDEN = 32


def build_tiny_guard(path: Path, reply: str) -> Path:
    """Save (save_pretrained) a tokenizer and a 2-layer Qwen3ForCausalLM in `path` that answer
    every prompt with `reply` (e.g. "Safety: Unsafe\\nCategories: Violent") under greedy
    decoding."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(
        [reply] * 50,  # so that BPE merges each word of the reply into one token
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=SPECIAL,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    bpe_model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe_model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=bpe_model["vocab"], merges=merges)  # type: ignore[arg-type]
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    tokenizer.add_tokens(LABELS)
    tokenizer.chat_template = CHAT_TEMPLATE
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    request = tokenizer.apply_chat_template(
        [{"role": "user", "content": "any prompt"}], add_generation_prompt=True, return_dict=True
    )
    start = int(request["input_ids"][-1])
    chain = tokenizer.encode(reply, add_special_tokens=False)
    if len(set(chain)) != len(chain) or start in chain:
        raise ValueError(f"reply {reply!r} repeats a token or uses the request's last token")
    successor = {start: chain[0], **dict(zip(chain, [*chain[1:], eos], strict=True))}
    if len(successor) > HIDDEN:
        raise ValueError("reply too long for the tiny model")

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=2048,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return save_chain_model(Qwen3ForCausalLM, config, tokenizer, successor, eos, path)


class GuardServer:
    """A tiny OpenAI-compatible guard: answers "Unsafe / Violent" for prompts with "attack"
    in them, "Safe" otherwise, on /v1/chat/completions and /v1/moderations. `delay` seconds
    before answering, `status` to answer an error."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.status = 200
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body})
                time.sleep(outer.delay)
                text = body["input"] if "input" in body else body["messages"][-1]["content"]
                unsafe = "attack" in text
                if self.path.endswith("/moderations"):
                    reply: dict[str, Any] = {
                        "results": [
                            {"flagged": unsafe, "categories": {"violence": unsafe, "hate": False}}
                        ]
                    }
                else:
                    answer = "Safety: Unsafe\nCategories: Violent" if unsafe else "Safety: Safe"
                    reply = {"choices": [{"message": {"role": "assistant", "content": answer}}]}
                data = json.dumps(reply).encode()
                try:
                    self.send_response(outer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (its budget ran out): what the test wants

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
