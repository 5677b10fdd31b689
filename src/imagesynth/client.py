"""A small client for `imagesynth generate`: submit, follow progress, download the PNGs."""

from __future__ import annotations

import sys
import time
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
    """Poll until the task ends, drawing a progress bar over the denoising steps."""
    with tqdm(total=None, unit="step", desc="queued", file=sys.stderr) as bar:
        while True:
            r = http.get(f"{base}/tasks/{task_id}")
            if r.status_code != 200:
                raise _fail(r)
            output: dict[str, Any] = r.json()["output"]
            status = output["task_status"]
            progress = output.get("task_progress")
            if progress:
                bar.total = progress["steps"]
                bar.n = progress["step"]
            if status not in ("PENDING", "RUNNING"):
                if status == "SUCCEEDED" and bar.total:
                    bar.n = bar.total
                bar.set_description(status.lower())
                bar.refresh()
                return output
            bar.set_description(status.lower())
            bar.refresh()
            time.sleep(POLL_SECONDS)
