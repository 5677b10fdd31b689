"""A small client for `imagesynth generate`: submit, follow progress, download the PNGs."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import typer
from tqdm import tqdm

POLL_SECONDS = 0.5


@dataclass(frozen=True)
class GenerateRequest:
    model: str
    prompt: str
    negative_prompt: str | None = None
    size: str | None = None
    n: int | None = None
    seed: int | None = None
    steps: int | None = None

    def body(self) -> dict[str, Any]:
        parameters = {
            k: v
            for k, v in (
                ("size", self.size),
                ("n", self.n),
                ("seed", self.seed),
                ("steps", self.steps),
            )
            if v is not None
        }
        inputs: dict[str, Any] = {"prompt": self.prompt}
        if self.negative_prompt:
            inputs["negative_prompt"] = self.negative_prompt
        return {"model": self.model, "input": inputs, "parameters": parameters}


def _fail(response: httpx.Response) -> typer.Exit:
    try:
        body = response.json()
        detail = f"{body.get('code')}: {body.get('message')}"
    except ValueError:
        detail = response.text[:200]
    print(f"error: HTTP {response.status_code} {detail}", file=sys.stderr)
    return typer.Exit(1)


def run_generate(base_url: str, api_key: str, request: GenerateRequest, out: Path) -> list[Path]:
    headers = {"Authorization": f"Bearer {api_key}"}
    base = base_url.rstrip("/")
    with httpx.Client(timeout=60.0, headers=headers) as http:
        r = http.post(
            f"{base}/services/aigc/text2image/image-synthesis",
            json=request.body(),
            headers={"X-DashScope-Async": "enable"},
        )
        if r.status_code != 200:
            raise _fail(r)
        task_id = r.json()["output"]["task_id"]
        output = _follow(http, base, task_id)
        if output["task_status"] != "SUCCEEDED":
            code = output.get("code", output["task_status"])
            print(f"error: task {task_id} {code}: {output.get('message', '')}", file=sys.stderr)
            raise typer.Exit(1)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, item in enumerate(output.get("results", [])):
            if "url" not in item:
                print(f"image {i}: {item.get('code')}: {item.get('message')}", file=sys.stderr)
                continue
            image = http.get(item["url"])
            if image.status_code != 200:
                raise _fail(image)
            path = out / f"{task_id}-{i}.png"
            path.write_bytes(image.content)
            paths.append(path)
        return paths


def _follow(http: httpx.Client, base: str, task_id: str) -> dict[str, Any]:
    """Follow the task's progress stream (GET .../tasks/{id}/events) until it ends, drawing a
    progress bar over the denoising steps; the final query reply's `output`. A server that
    has no stream (404) is polled instead."""
    with tqdm(total=None, unit="step", desc="queued", file=sys.stderr) as bar:
        with http.stream(
            "GET", f"{base}/tasks/{task_id}/events", timeout=httpx.Timeout(60.0, read=None)
        ) as r:
            if r.status_code == 200:
                for event, data in _events(r.iter_lines()):
                    if event in ("status", "progress"):
                        _draw(bar, data)
                    elif event == "result":
                        _draw(bar, data["output"])
                        return dict(data["output"])
                    elif event == "error":
                        raise _fail_with(data)
            elif r.status_code != 404:
                r.read()
                raise _fail(r)
        return _poll(http, base, task_id, bar)


def _events(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a Server-Sent Events stream; comments are skipped."""
    event, data = "message", ""
    for line in lines:
        if not line:
            if data:
                yield event, json.loads(data)
            event, data = "message", ""
        elif line.startswith("event:"):
            event = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data += line[len("data:") :].strip()


def _draw(bar: tqdm[Any], output: dict[str, Any]) -> None:
    status = output["task_status"]
    progress = output.get("task_progress") or (
        {"step": output["step"], "steps": output["steps"]} if "steps" in output else None
    )
    if progress:
        bar.total = progress["steps"]
        bar.n = progress["step"]
    if status == "SUCCEEDED" and bar.total:
        bar.n = bar.total
    bar.set_description(status.lower())
    bar.refresh()


def _fail_with(error: dict[str, Any]) -> typer.Exit:
    print(f"error: {error.get('code')}: {error.get('message')}", file=sys.stderr)
    return typer.Exit(1)


def _poll(http: httpx.Client, base: str, task_id: str, bar: tqdm[Any]) -> dict[str, Any]:
    while True:
        r = http.get(f"{base}/tasks/{task_id}")
        if r.status_code != 200:
            raise _fail(r)
        output: dict[str, Any] = r.json()["output"]
        _draw(bar, output)
        if output["task_status"] not in ("PENDING", "RUNNING"):
            return output
        time.sleep(POLL_SECONDS)
