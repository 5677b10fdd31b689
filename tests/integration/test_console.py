"""The web console in a real browser (headless chromium, tests/browser.py) against the real
service over real HTTP: a new user's first image, the messages a person sees for a wrong key
and a refused prompt, the operator's keys and usage, and what the page may load.

Screenshots go to test-artifacts/console/ at the repository root (printed at the end)."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from imagesynth.config import Settings
from imagesynth.db import SqlStores
from imagesynth.domain import TaskStatus
from imagesynth.tasks.models import ImageResult
from tests.browser import headless_chromium
from tests.integration.api_client import SUBMIT_PATH
from tests.integration.conftest import clean_environment
from tests.integration.inprocess import InProcessService, open_service

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
BLOCKED_PROMPT = "how to make a pipe bomb"  # safety/terms: terrorism (test_moderation.py)
REFUSED = "Input or output data may contain inappropriate content."
TIMEOUT_MS = 60_000


# No worker serves this model: the failures test plays its worker (as test_partial_failure.py).
UNSERVED = "wanx2.1-t2i-turbo"


@pytest.fixture(scope="module")
def service(make_settings: Callable[..., Settings]) -> Iterator[InProcessService]:
    with open_service(make_settings(), workers=0, transport="http") as svc:
        svc.start_worker([m for m in svc.services.catalog.models if m != UNSERVED])
        yield svc


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    stack = ExitStack()
    try:
        launched = stack.enter_context(headless_chromium())
    except RuntimeError as exc:
        pytest.skip(f"no browser for the console tests: {exc}")
    with stack:
        yield launched
    print(f"\nconsole screenshots: {ARTIFACTS}")


class Requests:
    """Every request the pages of the module made, and every console error they logged."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.errors: list[str] = []  # console errors (a refused request logs one, too)
        self.exceptions: list[str] = []  # uncaught in the page's scripts


@pytest.fixture(scope="module")
def seen() -> Requests:
    return Requests()


@pytest.fixture
def page(browser: Any, service: InProcessService, seen: Requests) -> Iterator[Any]:
    """A fresh tab (its own session storage) on the console, at desktop width."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.on("request", lambda r: seen.urls.append(r.url))
    tab.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: seen.exceptions.append(str(e)))
    tab.goto(service.url + "/")
    tab.wait_for_selector("body[data-ready=true]")
    yield tab
    context.close()


def shot(page: Any, name: str, *, full_page: bool = True) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def enter_key(page: Any, key: str) -> None:
    page.get_by_test_id("api-key").fill(key)
    page.get_by_test_id("save-key").click()


def enter_admin(page: Any, token: str) -> None:
    page.get_by_test_id("admin-token").fill(token)
    page.get_by_test_id("save-admin").click()


def message(page: Any) -> str:
    box = page.get_by_test_id("message")
    box.wait_for(state="visible")
    return str(box.inner_text())


def watch_progress(page: Any) -> None:
    """Record every state and value the progress bar takes from now on (see progress_seen)."""
    page.evaluate(
        """() => {
          const bar = document.querySelector('[data-testid=progress]');
          window.progressSeen = {states: [], values: []};
          new MutationObserver((records) => {
            for (const r of records) {
              if (r.attributeName === 'data-state') window.progressSeen.states.push(r.oldValue);
              else window.progressSeen.values.push(Number(r.oldValue));
            }
          }).observe(bar, {attributeFilter: ['data-state', 'value'], attributeOldValue: true});
        }"""
    )


def progress_seen(page: Any) -> tuple[list[str], list[int]]:
    """The bar's states and values since watch_progress, each change once, the last included.
    From each change's old value: the observer sees a batch of changes at once."""
    seen = page.evaluate(
        """() => { const bar = document.querySelector('[data-testid=progress]');
          return [[...window.progressSeen.states, bar.dataset.state],
                  [...window.progressSeen.values, bar.value]]; }"""
    )

    def changes(items: list[Any]) -> list[Any]:
        return [v for i, v in enumerate(items) if i == 0 or v != items[i - 1]]

    return changes(seen[0])[1:], [int(v) for v in changes(seen[1])[1:]]


def fill_request(page: Any, prompt: str, *, size: str, steps: int | None = None) -> None:
    page.get_by_test_id("model").select_option("wan2.2-t2i-flash")
    page.get_by_test_id("prompt").fill(prompt)
    page.get_by_test_id("size").fill(size)
    page.get_by_test_id("n").fill("1")
    page.get_by_test_id("seed").fill("7")
    if steps is not None:
        page.get_by_test_id("steps").fill(str(steps))


def generate(page: Any) -> tuple[int, int]:
    """Press Generate, wait for the image; its natural size."""
    page.get_by_test_id("generate").click()
    image = page.get_by_test_id("result-image").first
    image.wait_for(state="visible")
    page.wait_for_function(
        "() => { const i = document.querySelector('[data-testid=result-image]');"
        " return i && i.complete && i.naturalWidth > 0; }"
    )
    size = image.evaluate("i => [i.naturalWidth, i.naturalHeight]")
    return int(size[0]), int(size[1])


def copied_code_makes_the_same_request(page: Any, service: InProcessService) -> None:
    """ "Copy as": the Python snippet run as it is makes the same image; curl's submits it."""
    env = {**clean_environment(), "DASHSCOPE_API_KEY": service.key}
    python = page.get_by_test_id("snippet").inner_text()
    assert service.key not in python
    out = subprocess.run(
        [sys.executable, "-c", python], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    url = out.stdout.strip().splitlines()[-1]
    assert url.startswith(service.url + "/files/"), out.stdout
    with httpx.Client() as client:
        image = Image.open(io.BytesIO(client.get(url).content))
    assert image.size == (768, 512)

    page.get_by_role("tab", name="curl").click()
    curl = page.get_by_test_id("snippet").inner_text()
    assert curl.startswith("curl -s") and service.key not in curl
    submit = curl.split("\n# ->")[0]
    out = subprocess.run(["bash", "-c", submit], env=env, capture_output=True, text=True)
    assert json.loads(out.stdout)["output"]["task_status"] == "PENDING", out
    page.get_by_role("tab", name="OpenAI SDK").click()
    openai = page.get_by_test_id("snippet").inner_text()
    assert f'base_url="{service.url}/v1"' in openai
    assert 'size="768x512"' in openai and 'extra_body={"seed": 7, "steps": 60' in openai
    page.get_by_role("tab", name="Python SDK").click()


def test_a_new_user_makes_an_image_and_finds_it_in_the_gallery(
    page: Any, service: InProcessService
) -> None:
    enter_key(page, service.key)
    assert "Key accepted" in message(page)
    page.wait_for_selector("[data-testid=model] option[value='wan2.2-t2i-flash']", state="attached")
    # Enough steps that the bar shows the run (each is a few ms on the demo weights).
    fill_request(page, "a lighthouse at dusk, oil painting", size="768*512", steps=60)
    assert "ImageSynthesis.call(" in page.get_by_test_id("snippet").inner_text()
    watch_progress(page)
    assert generate(page) == (768, 512)

    states, values = progress_seen(page)
    print("progress bar:", states, values)
    assert states[-1] == "done" and values[-1] == 100, (states, values)
    assert "running" in states or "pending" in states, states
    assert values == sorted(values) and len(values) >= 3, f"the bar did not move on: {values}"
    assert page.get_by_test_id("progress").get_attribute("data-state") == "done"
    assert "Seed: 7" in page.get_by_test_id("results").inner_text()
    task_id = page.get_by_test_id("progress").get_attribute("data-task-id")
    shot(page, "playground")
    copied_code_makes_the_same_request(page, service)

    page.get_by_role("link", name="Gallery").click()
    item = page.locator(f"[data-testid=gallery-item][data-task-id='{task_id}']")
    item.wait_for()
    assert item.get_attribute("data-status") == "SUCCEEDED"
    assert "wan2.2-t2i-flash" in item.inner_text() and "768*512" in item.inner_text()
    item.get_by_test_id("gallery-thumb").wait_for()
    shot(page, "gallery")

    # "Use these settings again" fills the playground with the same request.
    item.get_by_test_id("use-again").click()
    page.get_by_test_id("prompt").wait_for(state="visible")
    assert page.get_by_test_id("prompt").input_value() == "a lighthouse at dusk, oil painting"
    assert page.get_by_test_id("size").input_value() == "768*512"

    # At phone width the playground still fits: nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    overflow = page.evaluate("document.documentElement.scrollWidth")
    assert overflow <= 390, f"the page is {overflow}px wide at a 390px viewport"
    shot(page, "playground-phone")


def test_a_wrong_key_and_a_refused_prompt_say_why(page: Any, service: InProcessService) -> None:
    enter_key(page, "sk-" + "0" * 32)
    text = message(page)
    assert "InvalidApiKey" in text and "refused" in text, text
    assert page.get_by_test_id("key-state").inner_text().startswith("No key")
    shot(page, "wrong-key")

    enter_key(page, service.key)
    page.wait_for_selector("[data-testid=model] option[value='wan2.2-t2i-flash']", state="attached")
    fill_request(page, BLOCKED_PROMPT, size="512*512")
    page.get_by_test_id("generate").click()
    page.wait_for_selector("[data-testid=progress][data-state=failed]")
    text = message(page)
    assert "DataInspectionFailed" in text and REFUSED in text, text
    assert page.get_by_test_id("result-image").count() == 0
    shot(page, "refused")


def test_the_operator_creates_a_key_sees_its_usage_and_revokes_it(
    page: Any, service: InProcessService
) -> None:
    page.on("dialog", lambda d: d.accept())
    page.get_by_role("link", name="Keys").click()
    enter_admin(page, "not-the-token")
    assert "InvalidApiKey" in message(page)
    enter_admin(page, service.admin_token)
    page.get_by_test_id("new-key-name").fill("console-user")
    page.get_by_test_id("create-key").click()
    page.wait_for_function("() => document.querySelector('[data-testid=new-secret]').textContent")
    secret = page.get_by_test_id("new-secret").inner_text()
    assert re.fullmatch(r"sk-\w+", secret), secret
    row = page.locator("[data-testid=key-row][data-key-name='console-user']")
    assert row.get_attribute("data-key-status") == "active"
    assert secret not in row.inner_text()

    # Straight to the playground with it: the secret leaves the page.
    page.get_by_test_id("use-secret").click()
    page.wait_for_selector("[data-testid=model] option[value='wan2.2-t2i-flash']", state="attached")
    fill_request(page, "a red fox in snow", size="512*512")
    assert generate(page) == (512, 512)
    page.get_by_role("link", name="Keys").click()
    assert not page.get_by_test_id("new-secret").is_visible()
    assert secret not in page.content()

    page.get_by_role("link", name="Keys").click()
    row.get_by_role("button", name="Set limits of key console-user").click()
    page.locator("#edit-pending").fill("5")
    page.locator("#edit-model").select_option("wan2.2-t2i-flash")
    page.locator("#edit-inflight").fill("3")
    page.get_by_test_id("save-limits").click()
    page.locator(
        "[data-testid=key-row][data-key-name='console-user']", has_text="5 waiting"
    ).wait_for()
    assert "wan2.2-t2i-flash: in_flight 3" in row.inner_text()

    page.get_by_role("link", name="Usage").click()
    usage = page.locator("[data-testid=usage-row][data-model='wan2.2-t2i-flash']")
    usage.wait_for()
    with httpx.Client(headers={"Authorization": f"Bearer {service.admin_token}"}) as client:
        rows = client.get(f"{service.url}/admin/v1/usage", params={"model": "wan2.2-t2i-flash"})
    made = sum(r["images"] for r in rows.json()["usage"])
    assert made >= 1
    assert int(usage.get_attribute("data-images") or 0) == made
    bars = page.locator("[data-testid=usage-chart] rect[data-model='wan2.2-t2i-flash']")
    assert sum(float(b.get_attribute("data-value") or 0) for b in bars.all()) == made
    shot(page, "usage")

    page.get_by_role("link", name="Keys").click()
    row.get_by_test_id("revoke-key").click()
    page.locator(
        "[data-testid=key-row][data-key-name='console-user'][data-key-status=revoked]"
    ).wait_for()

    page.get_by_role("link", name="Playground").click()
    fill_request(page, "a red fox in snow", size="512*512")
    page.get_by_test_id("generate").click()
    page.wait_for_selector("[data-testid=progress][data-state=failed]")
    assert "InvalidApiKey" in message(page)


def fail_a_task(service: InProcessService) -> str:
    """Submit to the model no worker serves, then end it FAILED as its worker."""
    with service.client() as client:
        rsp = client.post(
            SUBMIT_PATH,
            headers={"X-DashScope-Async": "enable"},
            json={"model": UNSERVED, "input": {"prompt": "a kite"}, "parameters": {"n": 1}},
        )
    task_id = rsp.json()["output"]["task_id"]
    store = SqlStores.open(f"sqlite:///{service.path / 'imagesynth.db'}")
    try:
        task = store.queue.claim("test-worker", [UNSERVED], 30)
        assert task is not None and task.id == task_id
        failed = [ImageResult(code="InternalError.Timeout", message="The image timed out.")]
        assert store.queue.finish(
            task.id,
            "test-worker",
            task.attempts,
            TaskStatus.FAILED,
            failed,
            "InternalError.Timeout",
            "All images failed.",
        )
    finally:
        store.close()
    return str(task_id)


def test_the_operator_sees_the_queue_and_recent_failures(
    page: Any, service: InProcessService
) -> None:
    task_id = fail_a_task(service)
    page.get_by_role("link", name="Queue").click()
    enter_admin(page, service.admin_token)
    unserved = page.locator(f"[data-testid=queue-row][data-model='{UNSERVED}']")
    unserved.wait_for()
    assert "none" in unserved.inner_text()  # no live worker for it
    served = page.locator("[data-testid=queue-row][data-model='wan2.2-t2i-flash']")
    assert "none" not in served.inner_text()
    assert "wan2.2-t2i-flash" in page.get_by_test_id("worker-row").first.inner_text()
    shot(page, "queue")

    page.get_by_role("link", name="Failures").click()
    row = page.locator("[data-testid=failure-row]", has_text=task_id)
    row.wait_for()
    assert row.get_attribute("data-code") == "InternalError.Timeout"
    assert UNSERVED in row.inner_text() and "All images failed." in row.inner_text()
    shot(page, "failures")


def test_the_catalog_the_form_is_built_from(service: InProcessService) -> None:
    with service.client() as client:
        models = {m["name"]: m for m in client.get("/console/api/models").json()["models"]}
    flash = models["wan2.2-t2i-flash"]
    assert (flash["sizes"], flash["min_side"], flash["max_side"], flash["n_max"]) == (
        [],
        512,
        1440,
        4,
    )
    assert flash["styles"] == [] and not flash["reference_images"]
    wanx = models["wanx-v1"]
    assert "1024*1024" in wanx["sizes"] and "<watercolor>" in wanx["styles"]
    assert wanx["reference_images"] and wanx["ref_modes"] == ["repaint", "refonly"]
    assert "qwen-image-max" not in models  # served on the messages endpoint only


def test_the_queue_and_failures_routes_take_the_admin_credential_only(
    service: InProcessService,
) -> None:
    with service.client() as client:
        for path in ("/admin/v1/queue", "/admin/v1/failures"):
            rsp = client.get(path)
            assert (rsp.status_code, rsp.json()["code"]) == (403, "AccessDenied"), path
    with httpx.Client(
        base_url=service.url, headers={"Authorization": f"Bearer {service.admin_token}"}
    ) as client:
        queue = client.get("/admin/v1/queue").json()
        rows = {m["model"]: m for m in queue["models"]}
        assert set(rows) == set(service.services.catalog.models)
        assert rows[UNSERVED]["live_workers"] == 0 and rows["wan2.2-t2i-flash"]["live_workers"] == 1
        assert [UNSERVED not in w["models"] for w in queue["workers"]] == [True]
        for bad in ("0", "201", "x", "１"):
            rsp = client.get("/admin/v1/failures", params={"limit": bad})
            assert (rsp.status_code, rsp.json()["code"]) == (400, "InvalidParameter"), bad


def jpeg_data_url() -> str:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(out, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


def test_the_progress_stream_feeds_the_bar_and_its_previews(
    page: Any, service: InProcessService
) -> None:
    """The stream's contract (GET /api/v1/tasks/{id}/events: status, progress with previews,
    then result), served here by the browser's request interception over the real task."""
    asked: dict[str, str] = {}

    def events(route: Any) -> None:
        request = route.request
        asked.update(url=request.url, authorization=request.headers.get("authorization", ""))
        task_id = request.url.split("/tasks/")[1].split("/")[0]
        reply = service.wait(task_id)
        frames = [
            ("status", {"task_id": task_id, "task_status": "RUNNING"}),
            (
                "progress",
                {
                    "task_id": task_id,
                    "task_status": "RUNNING",
                    "step": 1,
                    "steps": 4,
                    "preview": jpeg_data_url(),
                },
            ),
            ("progress", {"task_id": task_id, "task_status": "RUNNING", "step": 3, "steps": 4}),
            ("result", reply),
        ]
        body = "".join(f"event: {e}\ndata: {json.dumps(d)}\n\n" for e, d in frames)
        route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)

    page.route("**/api/v1/tasks/*/events*", events)
    # By keyboard: the key, then Enter submits its form.
    page.get_by_test_id("api-key").press_sequentially(service.key)
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=model] option[value='wan2.2-t2i-flash']", state="attached")
    fill_request(page, "a paper boat", size="640*640")
    watch_progress(page)
    page.evaluate(
        """() => {
          const img = document.querySelector('[data-testid=preview]');
          window.previewsSeen = [];
          new MutationObserver(() => window.previewsSeen.push(img.src.slice(0, 23)))
            .observe(img, {attributes: true, attributeFilter: ['src']});
        }"""
    )
    page.get_by_test_id("generate").focus()
    page.keyboard.press("Enter")
    page.get_by_test_id("result-image").wait_for()
    assert asked["authorization"] == f"Bearer {service.key}"
    assert "previews=true" in asked["url"]
    states, values = progress_seen(page)
    assert states == ["submitting", "pending", "running", "done"], states
    assert values == [1, 2, 5, 28, 73, 100], values  # RUNNING, step 1/4, step 3/4, the result
    assert page.evaluate("window.previewsSeen") == ["data:image/jpeg;base64,"]


def png_bytes(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (30, 90, 160)).save(out, format="PNG")
    return out.getvalue()


def test_wanx_v1_with_a_style_and_an_uploaded_reference(
    page: Any, service: InProcessService
) -> None:
    enter_key(page, service.key)
    page.wait_for_selector("[data-testid=model] option[value='wanx-v1']", state="attached")
    page.get_by_test_id("model").select_option("wanx-v1")
    assert (
        page.get_by_test_id("style").is_visible() and page.get_by_test_id("ref-file").is_visible()
    )
    page.get_by_test_id("size").select_option("720*1280")
    page.get_by_test_id("prompt").fill("a cat on a sofa")
    page.get_by_test_id("style").select_option("<watercolor>")
    page.get_by_test_id("ref-file").set_input_files(
        {"name": "photo.png", "mimeType": "image/png", "buffer": png_bytes(320, 320)}
    )
    page.get_by_test_id("ref-mode").select_option("refonly")
    snippet = page.get_by_test_id("snippet").inner_text()
    assert (
        'style="<watercolor>"' in snippet
        and "ref_img=" in snippet
        and 'ref_mode="refonly"' in snippet
    )
    # Every control a person can reach has a label.
    unlabeled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
          .filter(e => e.offsetParent !== null && e.type !== 'hidden')
          .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                       && !e.textContent.trim())
          .map(e => e.id || e.outerHTML.slice(0, 60))"""
    )
    assert unlabeled == []
    assert generate(page) == (720, 1280)


def test_the_gallery_cancels_a_waiting_task_and_says_which_expired(
    page: Any, service: InProcessService
) -> None:
    with service.client() as client:
        rsp = client.post(
            SUBMIT_PATH,
            headers={"X-DashScope-Async": "enable"},
            json={"model": UNSERVED, "input": {"prompt": "a kite"}, "parameters": {"n": 1}},
        )
    waiting = rsp.json()["output"]["task_id"]
    gone = "00000000-0000-4000-8000-000000000000"
    page.evaluate(
        """(id) => sessionStorage.setItem('imagesynth.requests', JSON.stringify({[id]: {at: 1,
          body: {model: 'wan2.2-t2i-flash', input: {prompt: 'old'}, parameters: {}}}}))""",
        gone,
    )
    enter_key(page, service.key)
    page.get_by_role("link", name="Gallery").click()
    item = page.locator(f"[data-testid=gallery-item][data-task-id='{waiting}']")
    item.wait_for()
    assert item.get_attribute("data-status") == "PENDING"
    expired = page.locator(f"[data-testid=gallery-item][data-task-id='{gone}']")
    assert expired.get_attribute("data-status") == "EXPIRED" and "Expired" in expired.inner_text()
    # Tasks made elsewhere (the other tests' tabs, the SDK) show their size from their image.
    made_elsewhere = page.locator("[data-testid=gallery-item][data-status=SUCCEEDED]").first
    made_elsewhere.locator("[data-testid=gallery-size]", has_text="*").wait_for()
    item.get_by_test_id("cancel-task").click()
    page.locator(
        f"[data-testid=gallery-item][data-task-id='{waiting}'][data-status=CANCELED]"
    ).wait_for()
    assert service.query(waiting)["output"]["task_status"] == "CANCELED"


def test_the_console_pages_set_a_strict_csp_and_no_cookie(service: InProcessService) -> None:
    with httpx.Client(base_url=service.url) as client:
        for path in ("/", "/console/app.js", "/console/console.css"):
            rsp = client.get(path)
            assert rsp.status_code == 200, path
            csp = rsp.headers["content-security-policy"]
            assert "default-src 'self'" in csp and "script-src 'self'" in csp
            assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
            assert rsp.headers["x-content-type-options"] == "nosniff"
            assert "set-cookie" not in rsp.headers
        assert client.get("/console/../pyproject.toml").status_code == 404
        assert client.get("/console/nothing.js").status_code == 404
        assert client.get("/console/api/models").json()["code"] == "InvalidApiKey"
        # No CORS: another site's script can neither send a key nor read a reply.
        preflight = client.options(
            SUBMIT_PATH,
            headers={
                "Origin": "https://elsewhere.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert "access-control-allow-origin" not in preflight.headers


def test_a_waiting_task_is_cancelled_from_the_playground(
    page: Any, service: InProcessService
) -> None:
    enter_key(page, service.key)
    page.wait_for_selector(f"[data-testid=model] option[value='{UNSERVED}']", state="attached")
    page.get_by_test_id("model").select_option(UNSERVED)
    page.get_by_test_id("prompt").fill("a kite that waits")
    page.get_by_test_id("size").fill("512*512")
    page.get_by_test_id("generate").click()
    page.get_by_test_id("cancel-run").click()
    page.wait_for_selector("[data-testid=progress][data-state=canceled]")
    assert page.get_by_test_id("task-status").inner_text() == "Task CANCELED."
    assert not page.get_by_test_id("cancel-run").is_visible()


def test_the_pages_asked_nothing_of_another_origin(
    browser: Any, service: InProcessService, seen: Requests
) -> None:
    """Last in the module: every request the browser tests above made, and their console."""
    assert len(seen.urls) > 20, seen.urls
    foreign = [u for u in seen.urls if not u.startswith((service.url + "/", "data:", "blob:"))]
    assert foreign == []
    assert not [e for e in seen.errors if "Content Security Policy" in e], seen.errors
    assert seen.exceptions == []
