"""prompt_extend: validation rules, an OpenAI-compatible endpoint served locally (normal, slow,
failing, garbled), and a tiny local LM built offline running through transformers."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from imagesynth.config import Settings
from imagesynth.prompts import (
    NoRewriter,
    Rewrite,
    RewriterConfigError,
    ScreenedRewriter,
    build_rewriter,
)
from imagesynth.prompts.instructions import style_for, system_prompt
from imagesynth.prompts.local_lm import LocalLMRewriter
from imagesynth.prompts.openai_compatible import OpenAICompatibleRewriter
from imagesynth.prompts.validate import (
    accept,
    detect_language,
    language_mismatch,
    missing_quotes,
    quoted_spans,
    strip_chatter,
    truncate,
)
from imagesynth.safety.terms import TermFilter
from tests.unit.tiny_lm import build_tiny_lm

# ---------------------------------------------------------------------------- validation


def test_quoted_spans_in_every_style_and_not_apostrophes() -> None:
    text = "a sign 'Joe's Diner', “开业大吉”, \"OPEN\", 「東京」, ‘Mom’s’ and the cat's toy"
    assert [q.inner for q in quoted_spans(text)] == [
        "Joe's Diner",
        "开业大吉",
        "OPEN",
        "東京",
        "Mom’s",
    ]
    assert quoted_spans("the cat's toy and the dogs' bowl") == []
    assert quoted_spans('an unclosed "quote') == []


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("一只猫坐在红色沙发上，4K，high detail", "zh"),
        ("a red lantern with 福 on it", "other"),
        ("猫がソファに座っている", "ja"),
        ("소파에 앉아 있는 고양이", "ko"),
        ("a poster that says “开业大吉”", "other"),  # quoted text does not count
        ("海报上写着“HELLO WORLD”", "zh"),
    ],
)
def test_language_is_the_script_outside_quotes(text: str, language: str) -> None:
    assert detect_language(text) == language


def test_language_mismatch_rules() -> None:
    assert language_mismatch("一只猫", "一只橘猫睡在沙发上。") is None
    assert "Chinese" in (language_mismatch("一只猫", "An orange cat on a sofa.") or "")
    assert "Japanese" in (language_mismatch("一只猫", "猫がソファに座っている。") or "")
    assert "Chinese" in (language_mismatch("a cat", "一只猫。") or "")
    # Mixed prompts accept either script; a prompt of quoted text only accepts any.
    assert (
        language_mismatch("赛博朋克城市, cyberpunk city, neon lights", "赛博朋克城市的夜景") is None
    )
    assert language_mismatch('"OPEN"', "一块写着“OPEN”的招牌") is None


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("Sure! Here is the rewritten prompt:\n\nA red fox in snow.", "A red fox in snow."),
        ("Rewritten prompt: A red fox in snow.", "A red fox in snow."),
        ('"A red fox in snow."', "A red fox in snow."),
        ("A red fox in snow.\n\nNote: I added the lighting.", "A red fox in snow."),
        ("<think>The user wants a fox.</think>\nA red fox in snow.", "A red fox in snow."),
        ("```\nA red fox in snow.\n```", "A red fox in snow."),
        ("好的，以下是改写后的提示词：\n一只红狐狸卧在雪地里。", "一只红狐狸卧在雪地里。"),
        ("A red fox in snow.<|im_end|>", "A red fox in snow."),
        # A reply that starts and ends with different quoted spans is not unwrapped.
        (
            '"OPEN" is written on a sign that reads "CLOSED"',
            '"OPEN" is written on a sign that reads "CLOSED"',
        ),
    ],
)
def test_strip_chatter(reply: str, expected: str) -> None:
    assert strip_chatter(reply) == expected


def test_truncate_prefers_sentence_then_word_and_never_splits_a_quote() -> None:
    text = "A red fox sleeps in the snow. Soft light falls on its fur and the trees."
    assert truncate(text, 50) == "A red fox sleeps in the snow."
    assert truncate("A red fox sleeps in the deep white snow near trees", 30) == (
        "A red fox sleeps in the deep"
    )
    cut = truncate('A sign reads "WELCOME TO THE GRAND OPENING" over the door', 30)
    assert cut == "A sign reads"
    cjk = "一只猫坐在红色沙发上，窗外是雨夜的霓虹灯，暖色调，电影感构图"
    assert truncate(cjk, 22) == "一只猫坐在红色沙发上，窗外是雨夜的霓虹灯"
    assert truncate("short", 10) == "short"


def test_accept_keeps_a_good_rewrite_and_cuts_a_long_one() -> None:
    prompt = 'a poster that says "GRAND OPENING"'
    good = 'A bright poster with the words "GRAND OPENING" in gold letters across the top.'
    assert accept(prompt, good, max_chars=800) == Rewrite(good, rewritten=True)
    long = good + " Balloons float around it. " * 10
    result = accept(prompt, long, max_chars=120)
    assert result.rewritten and len(result.text) <= 120 and result.text.endswith(".")
    assert '"GRAND OPENING"' in result.text
    assert result.note and "cut" in result.note


@pytest.mark.parametrize(
    ("prompt", "reply", "why"),
    [
        ('a poster that says "GRAND OPENING"', "A poster with GRAND OPENING on it.", "quoted"),
        ('a poster that says "GRAND OPENING"', 'A poster saying "GRAND OPENNING".', "quoted"),
        ("一只猫", "An orange cat on a sofa.", "Chinese"),
        ("a cat", "一只橘猫。", "Chinese"),
        ("a cat", "Sure! Here is the rewritten prompt:", "empty"),
        ("a cat", "A cat \ufffd\ufffd on a sofa", "undecodable"),
        # The quote exists but lies past the limit: cutting it away is not allowed.
        (
            'a cat and "HELLO"',
            "A cat sits on a sofa in a quiet room. " * 5 + 'A sign says "HELLO".',
            "quoted",
        ),
    ],
)
def test_accept_falls_back_with_a_note(prompt: str, reply: str, why: str) -> None:
    result = accept(prompt, reply, max_chars=120)
    assert result.text == prompt and not result.rewritten
    assert result.note and why in result.note


def test_missing_quotes_accepts_another_quote_style() -> None:
    assert missing_quotes('写着"开业大吉"', "一块写着“开业大吉”的红色招牌") == []
    assert missing_quotes('"A" and "B"', 'only "B" here') == [1]


def test_instructions_follow_model_style_and_language() -> None:
    assert style_for("qwen-image-plus") == "qwen-image" == style_for("qwen-image")
    assert style_for("wan2.2-t2i-flash") == "general" == style_for("stable-diffusion")
    qwen_en = system_prompt("qwen-image", "other", 800)
    assert "quoted text exactly" in qwen_en and "font" in qwen_en and "800" in qwen_en
    assert "引号" in system_prompt("qwen-image", "zh", 500) and "500" in system_prompt(
        "qwen-image", "zh", 500
    )
    general = system_prompt("general", "other", 800)
    assert "lighting" in general and "composition" in general
    assert "光线" in system_prompt("general", "zh", 800)


# ------------------------------------------------------------- OpenAI-compatible endpoint


@dataclass
class Reply:
    """One scripted answer of the test server."""

    status: int = 200
    body: bytes | None = None  # None: a chat-completions reply carrying `content`
    content: str = "A red fox asleep in fresh snow, soft morning light."
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ChatServer:
    url: str
    replies: list[Reply]
    requests: list[dict[str, Any]]


def _handler(replies: list[Reply], requests: list[dict[str, Any]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            requests.append(
                {
                    "path": self.path,
                    "auth": self.headers.get("authorization"),
                    "json": json.loads(body),
                }
            )
            reply = replies.pop(0) if replies else Reply()
            time.sleep(reply.delay)
            payload = reply.body
            if payload is None:
                payload = json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": reply.content}}]}
                ).encode()
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (the slow-server test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    replies: list[Reply] = []
    requests: list[dict[str, Any]] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(replies, requests))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield ChatServer(f"http://127.0.0.1:{server.server_address[1]}/v1", replies, requests)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def make_rewriter() -> Iterator[Callable[..., OpenAICompatibleRewriter]]:
    made: list[OpenAICompatibleRewriter] = []

    def make(url: str, **kwargs: Any) -> OpenAICompatibleRewriter:
        kwargs.setdefault("timeout", 5.0)
        kwargs.setdefault("backoff", 0.05)
        rewriter = OpenAICompatibleRewriter(url, "test-llm", api_key="sk-rewrite", **kwargs)
        made.append(rewriter)
        return rewriter

    yield make
    for rewriter in made:
        rewriter.close()


def test_openai_rewriter_returns_the_endpoints_rewrite(
    chat_server: ChatServer, make_rewriter: Callable[..., OpenAICompatibleRewriter]
) -> None:
    chat_server.replies.append(Reply(content="Here is the rewritten prompt:\nA red fox in snow."))
    result = make_rewriter(chat_server.url).rewrite(
        "a fox", model="wan2.2-t2i-flash", max_chars=800
    )
    assert result == Rewrite("A red fox in snow.", rewritten=True)
    (request,) = chat_server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == "Bearer sk-rewrite"
    body = request["json"]
    assert body["model"] == "test-llm" and body["stream"] is False
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"] == "a fox"
    assert body["messages"][0]["content"] == system_prompt("general", "other", 800)


def test_openai_rewriter_speaks_chinese_to_a_chinese_prompt(
    chat_server: ChatServer, make_rewriter: Callable[..., OpenAICompatibleRewriter]
) -> None:
    chat_server.replies.append(
        Reply(content="一块写着“开业大吉”的红色招牌挂在店门上方，金色字体。")
    )
    prompt = "招牌上写着“开业大吉”"
    result = make_rewriter(chat_server.url).rewrite(prompt, model="qwen-image-plus", max_chars=800)
    assert result.rewritten and "“开业大吉”" in result.text
    system = chat_server.requests[0]["json"]["messages"][0]["content"]
    assert system == system_prompt("qwen-image", "zh", 800)


def test_slow_endpoint_falls_back_within_the_timeout(
    chat_server: ChatServer, make_rewriter: Callable[..., OpenAICompatibleRewriter]
) -> None:
    chat_server.replies.extend([Reply(delay=3.0), Reply(delay=3.0)])
    rewriter = make_rewriter(chat_server.url, timeout=0.5, attempts=2)
    started = time.monotonic()
    result = rewriter.rewrite("a fox", model="wan2.2-t2i-flash", max_chars=800)
    elapsed = time.monotonic() - started
    assert result == Rewrite("a fox", rewritten=False, note=result.note)
    assert result.note and "no reply within 0.5 s" in result.note
    assert elapsed < 0.5 + 0.3


def test_server_error_then_ok_is_retried(
    chat_server: ChatServer, make_rewriter: Callable[..., OpenAICompatibleRewriter]
) -> None:
    chat_server.replies.extend([Reply(status=500, body=b"{}"), Reply(content="A red fox in snow.")])
    result = make_rewriter(chat_server.url).rewrite("a fox", model="wan", max_chars=800)
    assert result == Rewrite("A red fox in snow.", rewritten=True)
    assert len(chat_server.requests) == 2


def test_throttling_honours_retry_after(
    chat_server: ChatServer, make_rewriter: Callable[..., OpenAICompatibleRewriter]
) -> None:
    chat_server.replies.extend(
        [Reply(status=429, body=b"{}", headers={"Retry-After": "0.2"}), Reply(content="A fox.")]
    )
    started = time.monotonic()
    result = make_rewriter(chat_server.url).rewrite("a fox", model="wan", max_chars=800)
    assert result.text == "A fox." and time.monotonic() - started >= 0.2


def test_retries_are_limited(
    chat_server: ChatServer, make_rewriter: Callable[..., OpenAICompatibleRewriter]
) -> None:
    chat_server.replies.extend([Reply(status=503, body=b"{}")] * 3)
    result = make_rewriter(chat_server.url, attempts=2).rewrite("a fox", model="wan", max_chars=800)
    assert result.text == "a fox" and not result.rewritten
    assert (
        result.note == "rewrite failed after 2 attempt(s): the rewriter endpoint answered HTTP 503"
    )
    assert len(chat_server.requests) == 2


def test_client_errors_are_not_retried(
    chat_server: ChatServer, make_rewriter: Callable[..., OpenAICompatibleRewriter]
) -> None:
    chat_server.replies.append(Reply(status=401, body=b'{"error": {"message": "bad key"}}'))
    result = make_rewriter(chat_server.url).rewrite("a fox", model="wan", max_chars=800)
    assert result.note == "the rewriter endpoint answered HTTP 401" and result.text == "a fox"
    assert len(chat_server.requests) == 1


@pytest.mark.parametrize(
    "body", [b"<html>Bad Gateway</html>", b'{"choices": []}', b'{"choices": [{"message": {}}]}']
)
def test_garbage_reply_falls_back(
    chat_server: ChatServer, make_rewriter: Callable[..., OpenAICompatibleRewriter], body: bytes
) -> None:
    chat_server.replies.append(Reply(body=body))
    result = make_rewriter(chat_server.url).rewrite("a fox", model="wan", max_chars=800)
    assert result == Rewrite("a fox", False, "the rewriter endpoint sent an unreadable reply")


def test_unreachable_endpoint_falls_back(
    make_rewriter: Callable[..., OpenAICompatibleRewriter],
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = make_rewriter(f"http://127.0.0.1:{port}/v1").rewrite("a fox", model="w", max_chars=9)
    assert result.text == "a fox" and result.note and "could not reach" in result.note


def test_rewrite_that_fails_validation_falls_back(
    chat_server: ChatServer, make_rewriter: Callable[..., OpenAICompatibleRewriter]
) -> None:
    chat_server.replies.append(Reply(content="A shop sign in neon."))  # the quote is gone
    prompt = 'a shop sign that says "OPEN"'
    result = make_rewriter(chat_server.url).rewrite(prompt, model="qwen-image", max_chars=800)
    assert result.text == prompt and result.note and "quoted text #1" in result.note


# ------------------------------------------------------------------ factory and screening


def test_build_rewriter_from_settings(chat_server: ChatServer, tmp_path: Path) -> None:
    none = build_rewriter(Settings(home=tmp_path))
    assert isinstance(none, NoRewriter) and not none.available
    assert "prompt_extend unavailable" in none.describe()
    assert none.rewrite("a fox", model="wan", max_chars=800) == Rewrite(
        "a fox", False, "no prompt rewriter configured"
    )

    settings = Settings(
        home=tmp_path,
        rewriter_base_url=chat_server.url,
        rewriter_model="test-llm",
        rewriter_api_key="sk-secret",  # type: ignore[arg-type]
        rewriter_timeout_seconds=3,
        rewriter_attempts=3,
    )
    rewriter = build_rewriter(settings)
    assert isinstance(rewriter, OpenAICompatibleRewriter)
    assert (rewriter.timeout, rewriter.attempts, rewriter.model) == (3, 3, "test-llm")
    assert "sk-secret" not in rewriter.describe() and chat_server.url in rewriter.describe()
    rewriter.close()

    with pytest.raises(RewriterConfigError, match="REWRITER_MODEL"):
        build_rewriter(Settings(home=tmp_path, rewriter_base_url=chat_server.url))
    with pytest.raises(RewriterConfigError, match=r"config\.json"):
        build_rewriter(Settings(home=tmp_path, rewriter="local", rewriter_path=tmp_path))
    with pytest.raises(RewriterConfigError, match="choose one"):
        build_rewriter(
            Settings(home=tmp_path, rewriter_base_url=chat_server.url, rewriter_path=tmp_path)
        )


def test_screened_rewrite_with_a_blocked_term_falls_back(
    chat_server: ChatServer, make_rewriter: Callable[..., OpenAICompatibleRewriter]
) -> None:
    screen = TermFilter.from_files().screen
    chat_server.replies.extend(
        [Reply(content="A nude figure on a beach."), Reply(content="A beach.")]
    )
    rewriter = ScreenedRewriter(make_rewriter(chat_server.url), screen)
    first = rewriter.rewrite("a figure on a beach", model="wan", max_chars=800)
    assert first == Rewrite("a figure on a beach", False, "rewrite rejected: blocked term 'nude'")
    assert rewriter.rewrite("a beach", model="wan", max_chars=800).text == "A beach."


# -------------------------------------------------------------------- local LM, offline


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("network access")


EN_REPLY = "A red fox sleeping in fresh snow under soft morning light."
ZH_REPLY = "一只橘猫睡在柔软的沙发上，午后阳光。"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Builds (once per reply and template choice) a tiny LM that always answers `reply`."""
    built: dict[tuple[str, bool], Path] = {}

    def get(reply: str, *, chat_template: bool = True) -> Path:
        if (reply, chat_template) not in built:
            path = tmp_path_factory.mktemp("tiny-lm")
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(socket.socket, "connect", _no_network)
                built[reply, chat_template] = build_tiny_lm(
                    path, reply, chat_template=chat_template
                )
        return built[reply, chat_template]

    return get


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "connect", _no_network)


@pytest.mark.usefixtures("offline")
def test_local_lm_rewrites_through_transformers(tiny_lm: Callable[..., Path]) -> None:
    rewriter = build_rewriter(
        Settings(rewriter_path=tiny_lm(EN_REPLY), rewriter_timeout_seconds=30)
    )
    assert isinstance(rewriter, LocalLMRewriter) and rewriter.available
    assert "prompt_extend via local model" in rewriter.describe()
    result = rewriter.rewrite("a fox in the snow", model="wan2.2-t2i-flash", max_chars=800)
    assert result == Rewrite(EN_REPLY, rewritten=True)


@pytest.mark.usefixtures("offline")
def test_local_lm_without_chat_template_uses_a_plain_prompt(tiny_lm: Callable[..., Path]) -> None:
    rewriter = LocalLMRewriter(tiny_lm(EN_REPLY, chat_template=False), timeout=30)
    rewriter.load()
    assert rewriter.rewrite("a fox", model="qwen-image", max_chars=800).text == EN_REPLY


@pytest.mark.usefixtures("offline")
def test_local_lm_keeps_a_chinese_rewrite(tiny_lm: Callable[..., Path]) -> None:
    rewriter = LocalLMRewriter(tiny_lm(ZH_REPLY), timeout=30)
    assert rewriter.rewrite("一只猫", model="wan2.2-t2i-flash", max_chars=800) == Rewrite(
        ZH_REPLY, rewritten=True
    )


@pytest.mark.usefixtures("offline")
@pytest.mark.parametrize(
    ("prompt", "why"),
    [
        ("一只狐狸", "the prompt is in Chinese, the rewrite in a non-CJK script"),
        ('a shop sign that says "OPEN"', "quoted text #1 not kept verbatim"),
    ],
)
def test_local_lm_output_failing_validation_falls_back(
    tiny_lm: Callable[..., Path], prompt: str, why: str
) -> None:
    rewriter = LocalLMRewriter(tiny_lm(EN_REPLY), timeout=30)
    assert rewriter.rewrite(prompt, model="qwen-image", max_chars=800) == Rewrite(
        prompt, rewritten=False, note=f"rewrite rejected: {why}"
    )


@pytest.mark.usefixtures("offline")
def test_local_lm_respects_the_limit(tiny_lm: Callable[..., Path]) -> None:
    rewriter = LocalLMRewriter(tiny_lm(EN_REPLY), timeout=30)
    result = rewriter.rewrite("a fox", model="wan", max_chars=30)
    assert result.rewritten and result.text == "A red fox sleeping in fresh"
    assert result.note and "limit 30" in result.note


@pytest.mark.usefixtures("offline")
def test_local_lm_past_its_timeout_falls_back(tiny_lm: Callable[..., Path]) -> None:
    rewriter = LocalLMRewriter(tiny_lm(EN_REPLY), timeout=0.001)
    rewriter.load()
    result = rewriter.rewrite("a fox", model="wan", max_chars=800)
    assert result.text == "a fox" and result.note == "no rewrite within 0.001 s"


def test_local_lm_that_cannot_load_falls_back(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    rewriter = LocalLMRewriter(tmp_path, timeout=5)
    for _ in range(2):  # the failure is remembered, not retried per prompt
        result = rewriter.rewrite("a fox", model="wan", max_chars=800)
        assert result.text == "a fox" and not result.rewritten
        assert result.note and "failed to load" in result.note
