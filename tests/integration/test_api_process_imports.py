"""The API process never imports torch, diffusers or transformers, whatever is configured
(README, Architecture): `imagesynth serve --no-worker` with every option that could bring them
in, used over HTTP as a user would, while a recorder watches every import it makes.

The recorder needs no hook in imagesynth: a sitecustomize.py on the server's PYTHONPATH puts a
finder first on sys.meta_path, which appends one JSON line to $HEAVY_IMPORT_LOG for each heavy
package the process imports (its thread, its importer, and the imagesynth frames on the stack)
and then declines, so the import goes on as usual: the process is watched, not changed. A mere
look for a package (importlib.util.find_spec, as transformers does for accelerate and peft)
asks the same finders; it is written down as a probe, which loads nothing and fails nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from dashscope import ImageSynthesis
from safetensors.numpy import save_file

from imagesynth.catalog import Catalog
from tests.integration.conftest import Home, Launcher, Server, sdk_pointed_at
from tests.integration.test_reference import png_bytes, reference_image
from tests.unit.tiny_guard import build_tiny_guard
from tests.unit.tiny_lm import build_tiny_lm

# torch, diffusers and transformers: what the README and STYLE.md promise. accelerate and peft:
# the torch-only stacks that diffusers and transformers load weights and LoRAs with; importing
# them imports torch anyway, but listed, the record names them when they are the way in.
# onnxruntime: the image classifiers' runtime, which safety/images.py promises the API process
# never imports. Not listed: numpy, PIL, safetensors, tokenizers, huggingface_hub and OpenCV,
# which are light or do the API's own work (PIL decodes reference images) and promised nothing.
# Only top-level names: a submodule's import imports its package first.
HEAVY = ("torch", "diffusers", "transformers", "accelerate", "peft", "onnxruntime")
LOG_VARIABLE = "HEAVY_IMPORT_LOG"

SITECUSTOMIZE = '''\
"""Records this process's imports of heavy packages (tests/integration/{test})."""

import json
import os
import sys
import threading

HEAVY = frozenset({heavy!r})
LOG = os.environ.get("{variable}")
HERE = os.path.dirname(os.path.abspath(__file__))


def write(record):
    record.update(pid=os.getpid(), argv=sys.orig_argv)
    # One write() on an O_APPEND file: lines of concurrent threads and processes never mix.
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\\n").encode())
    finally:
        os.close(fd)


def where(frame):
    module = frame.f_globals.get("__name__", "?")
    return f"{{module}}:{{frame.f_lineno}} in {{frame.f_code.co_name}}"


def module_of(frame):
    return str(frame.f_globals.get("__name__", "")).partition(".")[0]


class HeavyImportRecorder:
    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if fullname in HEAVY:
            stack = []
            frame = sys._getframe(1)
            while frame is not None:
                stack.append(frame)
                frame = frame.f_back
            callers = [
                f
                for f in stack
                if not f.f_code.co_filename.startswith("<frozen") and module_of(f) != "importlib"
            ]
            # An import asks the finders from importlib's _find_and_load_unlocked; anything
            # else (importlib.util.find_spec: "is it installed?") only probes, loading nothing.
            # (Should CPython rename it, the control test fails rather than this one passing.)
            probe = len(stack) < 2 or stack[1].f_code.co_name != "_find_and_load_unlocked"
            write(
                {{
                    "event": "probe" if probe else "import",
                    "name": fullname,
                    "thread": threading.current_thread().name,
                    "importer": where(callers[0]) if callers else None,
                    "imagesynth": [where(f) for f in stack if module_of(f) == "imagesynth"],
                }}
            )
        return None  # not ours to load: the next finder imports it as usual


if LOG:
    sys.meta_path.insert(0, HeavyImportRecorder)
    # Whatever came in before this file ran (a .pth file, say) went past the finder.
    before = sorted(HEAVY & {{name.partition(".")[0] for name in sys.modules}})
    write({{"event": "installed", "already_imported": before}})

# This file shadows any other sitecustomize (a distribution's, say): run that one too.
import importlib.machinery
import importlib.util

_path = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _path)
if _spec is not None and _spec.loader is not None:
    _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
'''

REPLY = "lone lighthouse on stormy cliffs at dusk"  # the tiny LM's one answer: see tiny_lm
CHINESE_PROMPT = "海边的灯塔"  # an English rewrite of it is dropped, with a note on the task


@dataclass
class ImportRecorder:
    """The sitecustomize folder and the log it writes to."""

    folder: Path
    log: Path

    def watch(self, env: dict[str, str]) -> dict[str, str]:
        """`env` with the recorder switched on for every Python process started with it."""
        path = os.pathsep.join(p for p in (str(self.folder), env.get("PYTHONPATH")) if p)
        return {**env, "PYTHONPATH": path, LOG_VARIABLE: str(self.log)}

    def records(self, pid: int | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [r for r in map(json.loads, lines) if pid is None or r["pid"] == pid]


@pytest.fixture
def recorder(tmp_path: Path) -> ImportRecorder:
    folder = tmp_path / "recorder"
    folder.mkdir()
    text = SITECUSTOMIZE.format(test=Path(__file__).name, heavy=HEAVY, variable=LOG_VARIABLE)
    (folder / "sitecustomize.py").write_text(text)
    return ImportRecorder(folder, tmp_path / "heavy-imports.jsonl")


def report(records: list[dict[str, Any]]) -> str:
    lines = []
    for r in records:
        lines.append(f"  {r['name']} (thread {r['thread']}), imported by {r['importer']}")
        lines.extend(f"      {frame}" for frame in r["imagesynth"])
    return "\n".join(lines)


def test_the_recorder_sees_a_heavy_import_and_where_it_came_from(
    recorder: ImportRecorder,
) -> None:
    """The control: the same recorder in a process that does import torch, through imagesynth
    code, writes it down and names that code; the import itself still works. A mere look for
    a package (importlib.util.find_spec) is told apart from an import."""
    code = (
        "import importlib.util; assert importlib.util.find_spec('diffusers'); "
        "from imagesynth.engine.diffusers.pipelines import resolve_dtype; "
        "print(resolve_dtype('auto', 'cpu'))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=recorder.watch(dict(os.environ)),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert proc.stdout.strip() == "torch.float32"
    installed, *seen = recorder.records()
    assert installed["event"] == "installed" and installed["already_imported"] == []
    # Asking whether diffusers is installed loads nothing: a probe, not an import.
    assert [r["event"] for r in seen if r["name"] == "diffusers"] == ["probe"]
    (torch,) = (r for r in seen if r["name"] == "torch")
    assert torch["event"] == "import"
    assert torch["thread"] == "MainThread"
    assert torch["importer"].startswith("imagesynth.engine.diffusers.pipelines:")
    assert torch["importer"].endswith(" in resolve_dtype")
    assert torch["imagesynth"] == [torch["importer"]]


def every_heavy_option(tmp_path: Path) -> dict[str, str]:
    """Settings that switch on everything that runs on torch, transformers or onnxruntime."""
    lm = build_tiny_lm(tmp_path / "tiny-lm", REPLY)
    guard = build_tiny_guard(tmp_path / "tiny-guard", "Safety: Safe\nCategories: None")
    # A style LoRA: a valid safetensors file, which only a worker would ever open.
    lora = tmp_path / "watercolor-lora.safetensors"
    save_file({"lora_unet_down.lora_down.weight": np.zeros((4, 8), np.float32)}, str(lora))
    text = resources.files("imagesynth").joinpath("default_catalog.toml").read_text()
    header = '[styles."<watercolor>"]\n'
    assert header in text
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(text.replace(header, f'{header}lora = "{lora}"\nlora_scale = 0.8\n'))
    wanx = Catalog.load(catalog).get("wanx-v1")
    assert wanx.ip_adapter == "demo" and wanx.style_table["<watercolor>"].lora == str(lora)
    return {
        "rewriter": "local",
        "rewriter_path": str(lm),
        "rewriter_timeout_seconds": "60",
        "guard": "local",  # a local guard model screens in the workers only
        "guard_path": str(guard),
        "image_safety": "nudenet",
        "invisible_watermark": "true",
        "catalog": str(catalog),
    }


def use_like_a_user(server: Server, tmp_path: Path) -> dict[str, Any]:
    """Every kind of API call, ending with a cancel; returns the prompt_extend task's last
    reply once a maintenance pass has visibly run after all of them."""
    assert httpx.get(f"{server.url}/health").status_code == 200
    extended = server.submit(
        {
            "model": "wan2.2-t2i-flash",
            "input": {"prompt": CHINESE_PROMPT},
            "parameters": {"n": 1, "size": "512*512", "prompt_extend": True},
        }
    )
    assert server.query(extended)["output"]["task_status"] == "PENDING"
    with server.client() as c:
        listed = c.get("/api/v1/tasks", params={"status": "PENDING"})
    assert listed.status_code == 200, listed.text
    assert extended in {t["task_id"] for t in listed.json()["data"]}

    # wanx-v1 with the LoRA style and a reference image through the SDK's upload flow, for
    # the IP-Adapter (refonly).
    path = tmp_path / "reference.png"
    path.write_bytes(png_bytes(reference_image()))
    with sdk_pointed_at(server):
        rsp = ImageSynthesis.async_call(
            model="wanx-v1",
            prompt="a cat on a sofa",
            n=1,
            style="<watercolor>",
            ref_img=str(path),
            ref_mode="refonly",
            ref_strength=0.7,
            api_key=server.key,
        )
    assert rsp.status_code == 200 and rsp.output.task_status == "PENDING", rsp

    admin = {"Authorization": "Bearer " + server.home.cli("admin-token").stdout.strip()}
    for url in ("/admin/v1/keys", "/admin/v1/usage?by=day&since=1d"):
        r = httpx.get(server.url + url, headers=admin)
        assert r.status_code == 200, r.text

    canceled = server.submit({"model": "wanx-v1", "input": {"prompt": "a bird"}})
    with server.client() as c:
        r = c.post(f"/api/v1/tasks/{canceled}/cancel")
    assert r.status_code == 200, r.text
    assert server.query(canceled)["output"]["task_status"] == "CANCELED"
    # IMAGESYNTH_RETENTION_SECONDS=1: the canceled task is forgotten by the first maintenance
    # pass a second after the cancel, by when the prompt stage (polling every 0.05 s) has had
    # the waiting task many times over.
    server.wait(canceled, until=lambda r: r["output"]["task_status"] == "UNKNOWN", timeout=60)
    reply = server.query(extended)
    assert reply["output"]["task_status"] == "PENDING"  # no worker
    return reply


@pytest.mark.parametrize("configured", ["every-heavy-option", "defaults"])
def test_the_api_process_never_imports_ml_packages(
    configured: str,
    tmp_path: Path,
    make_home: Callable[..., Home],
    start: Launcher,
    recorder: ImportRecorder,
) -> None:
    """Nothing heavy is imported from startup to shutdown, with every option that could
    bring it in switched on, and with none (the defaults). Other processes (the `keys
    create` and `admin-token` commands) are recorded too, and left out by pid."""
    options = every_heavy_option(tmp_path) if configured == "every-heavy-option" else {}
    home = make_home(retention_seconds="1", **options)
    home.env = recorder.watch(home.env)
    server = start(home=home, worker=False)
    started = time.monotonic()
    extended = use_like_a_user(server, tmp_path)
    used = time.monotonic() - started
    server.proc.stop()  # shutdown runs code too: record it
    pid = server.proc.popen.pid

    records = recorder.records(pid)
    installed = [r for r in records if r["event"] == "installed"]
    assert len(installed) == 1, f"the recorder did not run in the server (pid {pid})"
    assert installed[0]["argv"][-4:] == ["serve", "--port", str(server.port), "--no-worker"]
    assert installed[0]["already_imported"] == []
    imports = [r for r in records if r["event"] == "import"]
    probed = sorted({r["name"] for r in records if r["event"] == "probe"})
    assert not imports, (
        f"the API process (imagesynth serve --no-worker, pid {pid}) imported:\n"
        f"{report(imports)}\n"
        f"(and only looked for: {', '.join(probed) or 'nothing else'}; API used for "
        f"{used:.1f} s; the prompt_extend task: {extended['output']})"
    )
