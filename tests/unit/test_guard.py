"""The prompt guard: reading guard models' answers, the policy (controversial, categories
switched off, fail open or closed), a remote guard against a tiny HTTP server, a local guard on
a tiny offline Qwen3 model, and the worker failing a task its guard blocks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imagesynth.catalog import Catalog
from imagesynth.config import Settings
from imagesynth.domain import TaskStatus
from imagesynth.engine.base import Capabilities, GenerationBatch, StepCallback
from imagesynth.errors import FailureCode
from imagesynth.safety.guard import (
    Guard,
    GuardConfigError,
    GuardPolicy,
    GuardVerdict,
    OpenAIGuard,
    parse_reply,
)
from imagesynth.safety.guard_factory import build_guard, guard_kind, guard_runs_at_submit
from imagesynth.storage.local import LocalBlobStore
from imagesynth.storage.signing import UrlSigner
from imagesynth.tasks.memory_queue import InMemoryTaskQueue
from imagesynth.worker.engines import engine_spec
from imagesynth.worker.worker import Worker
from tests.unit.tiny_guard import GuardServer, build_tiny_guard

# ------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        # Qwen3Guard-Gen
        ("Safety: Safe\nCategories: None", ("safe", ())),
        ("Safety: Unsafe\nCategories: Violent", ("unsafe", ("Violent",))),
        (
            "Safety: Unsafe\nCategories: Violent, Non-violent Illegal Acts",
            ("unsafe", ("Violent", "Non-violent Illegal Acts")),
        ),
        (
            "Safety: Controversial\nCategories: Politically Sensitive Topics",
            ("controversial", ("Politically Sensitive Topics",)),
        ),
        ("<think>\n\n</think>\n\nSafety: Unsafe\nCategories: Suicide & Self-Harm\n", None),
        ("safety：unsafe\ncategories：Sexual Content or Sexual Acts", None),
        ("Safety: Unsafe", ("unsafe", ())),
        # Llama Guard
        ("safe", ("safe", ())),
        ("\n\nunsafe\nS1,S10", ("unsafe", ("S1", "S10"))),
        # no verdict
        ("I'm sorry, I can't help with that.", "none"),
        ("", "none"),
        ("Safety: maybe", "none"),
    ],
)
def test_guard_replies_are_read(reply: str, expected: object) -> None:
    parsed = parse_reply(reply)
    if expected == "none":
        assert parsed is None
    elif expected is None:  # spot-checked below: think block, full-width colons
        assert parsed is not None and parsed[0] == "unsafe" and len(parsed[1]) == 1
    else:
        assert parsed == expected


def test_the_policy() -> None:
    def v(safety: str | None, *categories: str) -> GuardVerdict:
        return GuardVerdict(safety, categories, error=None if safety else "timeout")  # type: ignore[arg-type]

    default = GuardPolicy()
    assert not default.blocks(v("safe"))
    assert default.blocks(v("unsafe", "Violent"))
    assert default.blocks(v("unsafe"))  # no category named: still unsafe
    assert not default.blocks(v("controversial", "Politically Sensitive Topics"))
    assert not default.blocks(v(None))  # fail open
    assert GuardPolicy(fail_closed=True).blocks(v(None))
    assert GuardPolicy(block_controversial=True).blocks(v("controversial"))
    off = GuardPolicy(categories_off=frozenset({"politically_sensitive_topics", "jailbreak"}))
    assert not off.blocks(v("unsafe", "Politically Sensitive Topics"))
    assert off.blocks(v("unsafe", "Politically Sensitive Topics", "Violent"))


# ---------------------------------------------------------------- remote guard (HTTP)


@pytest.fixture
def guard_server() -> Iterator[GuardServer]:
    server = GuardServer()
    yield server
    server.close()


def test_remote_chat_guard(guard_server: GuardServer) -> None:
    guard = OpenAIGuard(guard_server.url, "Qwen3Guard-Gen-0.6B", api_key="sk-x", timeout=2)
    verdict = guard.classify("plan an attack on a crowd")
    assert (verdict.safety, verdict.categories, verdict.error) == ("unsafe", ("Violent",), None)
    assert guard.classify("a cat on a sofa").safety == "safe"
    request = guard_server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["messages"] == [{"role": "user", "content": "plan an attack on a crowd"}]
    assert request["body"]["model"] == "Qwen3Guard-Gen-0.6B"


def test_remote_moderations_guard(guard_server: GuardServer) -> None:
    guard = OpenAIGuard(guard_server.url, None, api="moderations", timeout=2)
    verdict = guard.classify("an attack")
    assert (verdict.safety, verdict.categories) == ("unsafe", ("violence",))
    assert guard.classify("a cat").safety == "safe"
    assert guard_server.requests[0]["body"] == {"input": "an attack"}


def test_remote_guard_keeps_to_its_budget(guard_server: GuardServer) -> None:
    guard = OpenAIGuard(guard_server.url, "g", timeout=0.3)
    guard_server.delay = 1.0
    started = time.monotonic()
    verdict = guard.classify("a cat")
    assert time.monotonic() - started < 0.9
    assert verdict.safety is None and verdict.error == "no answer within 0.3 s"
    guard_server.delay, guard_server.status = 0.0, 503
    assert guard.classify("a cat").error == "the guard answered HTTP 503"
    closed = OpenAIGuard("http://127.0.0.1:9/v1", "g", timeout=0.5)  # nothing listens there
    assert closed.classify("a cat").error is not None


def test_build_guard_from_settings(tmp_path: Path) -> None:
    assert build_guard(Settings(home=tmp_path)) is None
    s = Settings(
        home=tmp_path,
        guard_base_url="http://127.0.0.1:1/v1",
        guard_model="g",
        guard_fail="closed",
        guard_timeout_seconds=0.5,
        safety_categories_off="jailbreak",
    )
    assert guard_kind(s) == "chat" and guard_runs_at_submit(s)
    guard = build_guard(s)
    assert guard is not None and isinstance(guard.model, OpenAIGuard)
    assert guard.policy == GuardPolicy(fail_closed=True, categories_off=frozenset({"jailbreak"}))
    with pytest.raises(GuardConfigError):
        build_guard(Settings(home=tmp_path, guard="chat"))
    with pytest.raises(GuardConfigError):
        build_guard(Settings(home=tmp_path, guard_path=tmp_path / "missing"))
    with pytest.raises(GuardConfigError):
        guard_kind(Settings(home=tmp_path, guard_base_url="http://x/v1", guard_path=tmp_path))


# ------------------------------------------------------------------- local guard (torch)


@pytest.fixture(scope="module")
def tiny_guard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_guard(
        tmp_path_factory.mktemp("guard"), "Safety: Unsafe\nCategories: Violent, Hate"
    )


def test_local_guard_answers_a_verdict_within_its_budget(tiny_guard: Path, tmp_path: Path) -> None:
    s = Settings(home=tmp_path, guard_path=tiny_guard, guard_timeout_seconds=10)
    assert guard_kind(s) == "local" and not guard_runs_at_submit(s)
    guard = build_guard(s)
    assert guard is not None
    guard.model.load()
    verdict, blocked = guard.check("一只猫 and whatever else the user wrote")
    assert (verdict.safety, verdict.categories, verdict.error) == (
        "unsafe",
        ("Violent", "Hate"),
        None,
    )
    assert blocked and 0 < verdict.elapsed < 10
    assert guard.model.name == f"local:{tiny_guard.name}"


def test_local_guard_failures_are_verdicts(tiny_guard: Path, tmp_path: Path) -> None:
    from imagesynth.safety.guard_local import LocalGuard

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    guard = LocalGuard(broken, timeout=5)
    with pytest.raises(Exception):  # noqa: B017  # whatever transformers raises for it
        guard.load()
    verdict = guard.classify("a cat")
    assert verdict.safety is None and "failed to load" in (verdict.error or "")
    hurried = LocalGuard(tiny_guard, timeout=1e-6)
    assert hurried.classify("a cat").error == "no answer within 1e-06 s"


# ----------------------------------------------------------------------------- worker

MODEL = "wan2.2-t2i-flash"
CATALOG = Catalog.load()


class FlatEngine:
    """Grey images at once: the worker's path around the engine, without weights."""

    capabilities = Capabilities(progress=False, cancel=False)

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.calls = 0

    def load(self) -> None:
        pass

    def generate(self, batch: GenerationBatch, on_step: StepCallback) -> list[Image.Image]:
        self.calls += 1
        return [Image.new("RGB", (batch.width, batch.height), "grey") for _ in batch.seeds]


class StubGuard:
    """A guard that calls prompts with `word` in them unsafe."""

    name = "stub"

    def __init__(self, word: str) -> None:
        self.word = word
        self.seen: list[str] = []

    def describe(self) -> str:
        return "stub guard"

    def load(self) -> None:
        pass

    def classify(self, text: str) -> GuardVerdict:
        self.seen.append(text)
        if self.word in text:
            return GuardVerdict("unsafe", ("Violent",), elapsed=0.01)
        return GuardVerdict("safe", elapsed=0.01)

    def close(self) -> None:
        pass


@pytest.fixture
def make_worker(tmp_path: Path) -> Callable[[Guard], tuple[Worker, InMemoryTaskQueue, FlatEngine]]:
    def make(guard: Guard) -> tuple[Worker, InMemoryTaskQueue, FlatEngine]:
        queue = InMemoryTaskQueue()
        blobs = LocalBlobStore(tmp_path / "blobs", UrlSigner(b"k" * 32, 60))
        worker = Worker(
            queue,
            blobs,
            CATALOG,
            tmp_path / "demo",
            lease_seconds=30,
            poll_seconds=0.01,
            models=[MODEL],
            guard=guard,
        )
        wanted = engine_spec(CATALOG.get(MODEL), worker.demo_root)
        engine = FlatEngine(wanted)
        worker.engines.install(wanted, engine)  # type: ignore[arg-type]
        return worker, queue, engine

    return make


def _add(queue: InMemoryTaskQueue, prompt: str) -> str:
    params = CATALOG.get(MODEL).validate(prompt=prompt, size="512*512", n=1, seed=1)
    return queue.add("key-a", MODEL, params).id


def test_worker_fails_a_task_its_guard_blocks_before_generating(
    make_worker: Callable[[Guard], tuple[Worker, InMemoryTaskQueue, FlatEngine]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="imagesynth.audit")
    stub = StubGuard("attack")
    worker, queue, engine = make_worker(Guard(stub, GuardPolicy()))
    blocked = _add(queue, "a quiet plan for an attack")
    clean = _add(queue, "a lighthouse at dusk")
    assert worker.run_once() and worker.run_once()

    failed = queue.get_task(blocked)
    assert failed is not None and failed.status is TaskStatus.FAILED
    assert failed.error_code == FailureCode.DATA_INSPECTION == "DataInspectionFailed"
    done = queue.get_task(clean)
    assert done is not None and done.status is TaskStatus.SUCCEEDED
    assert engine.calls == 1  # the blocked task never reached the engine
    lines = [r.getMessage() for r in caplog.records if r.name == "imagesynth.audit"]
    assert lines == [
        f"audit stage=prompt decision=block task_id={blocked} field=prompt layer=guard "
        "category=Violent guard=stub safety=unsafe ms=10",
        f"audit stage=prompt decision=pass task_id={clean} field=prompt layer=guard "
        "guard=stub safety=safe ms=10",
    ]
    assert all("attack" not in line for line in lines)


def test_worker_with_the_tiny_guard_model(
    make_worker: Callable[[Guard], tuple[Worker, InMemoryTaskQueue, FlatEngine]],
    tiny_guard: Path,
) -> None:
    from imagesynth.safety.guard_local import LocalGuard

    # The tiny model calls everything unsafe; with Violent and Hate switched off it passes.
    for off, status in ((frozenset(), TaskStatus.FAILED), (frozenset({"violent", "hate"}), None)):
        policy = GuardPolicy(categories_off=off)
        worker, queue, _ = make_worker(Guard(LocalGuard(tiny_guard, timeout=10), policy))
        task_id = _add(queue, "a lighthouse")
        worker.run_once()
        task = queue.get_task(task_id)
        assert task is not None
        assert task.status is (status or TaskStatus.SUCCEEDED)
