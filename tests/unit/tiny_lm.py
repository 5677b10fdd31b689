"""A tiny Qwen2 causal LM with a locally trained tokenizer, built offline, whose greedy answer
to any request is a reply chosen by the test: the real transformers path, a known output.

Random weights would give random text. Instead the attention and MLP outputs are zeroed, so
each position's logits depend on its own token only, and the embeddings and LM head are set
so that the last token of the request (the chat template's "assistant\\n", or the plain
prompt's "Rewritten prompt:") leads to the reply's first token, each reply token to the next,
and the last to <|im_end|>. Building takes a fraction of a second: nothing is trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imagesynth.prompts.instructions import system_prompt
from imagesynth.prompts.local_lm import encode

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HIDDEN = 64


def build_tiny_lm(path: Path, reply: str, *, chat_template: bool = True) -> Path:
    """Save (save_pretrained) a tokenizer and a 2-layer Qwen2ForCausalLM in `path` that answer
    every rewrite request with `reply` under greedy decoding. `chat_template=False` saves the
    tokenizer without one, so the rewriter falls back to its plain-text prompt."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Tokenizer

    # The reply many times over, so that BPE merges each of its words into one token.
    corpus = [reply] * 50 + ["Prompt: a cat\nRewritten prompt:", "提示词：一只猫\n改写后的提示词："]
    for style in ("qwen-image", "general"):
        for language in ("zh", "other"):
            corpus.append(system_prompt(style, language, 800))  # type: ignore[arg-type]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=1000,
            special_tokens=SPECIAL,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    bpe_model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe_model["merges"]]
    tokenizer = Qwen2Tokenizer(vocab=bpe_model["vocab"], merges=merges)  # type: ignore[arg-type]
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL[1:]})
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    # Where each request ends: English and Chinese instructions, both image-model styles.
    starts = {
        int(encode(tokenizer, prompt, model=model, max_chars=800)["input_ids"][0][-1])
        for prompt in ("a cat", "一只猫")
        for model in ("qwen-image-plus", "wan2.2-t2i-flash")
    }
    chain = tokenizer.encode(reply, add_special_tokens=False)
    if len(set(chain)) != len(chain) or starts & set(chain):
        raise ValueError(f"reply {reply!r} repeats a token or uses a request's last token")
    successor = {start: chain[0] for start in starts}
    successor.update(zip(chain, [*chain[1:], eos], strict=True))
    if len(successor) > HIDDEN:
        raise ValueError("reply too long for the tiny model")

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return save_chain_model(Qwen2ForCausalLM, config, tokenizer, successor, eos, path)


def save_chain_model(
    model_cls: Any,
    config: Any,
    tokenizer: Any,
    successor: dict[int, int],
    eos: int,
    path: Path,
) -> Path:
    """A tiny causal LM of `model_cls` that, greedily decoding, answers each token of
    `successor` with the token it maps to (one embedding dimension per token, the layers'
    outputs zeroed), saved with `tokenizer` in `path`."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_cls(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        head.zero_()
        for k, (token, following) in enumerate(successor.items()):
            embed[token] = 0.0
            embed[token, k] = 1.0
            head[following, k] = 10.0
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
