"""The `imagesynth` command: serve, worker, keys, models, generate."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from imagesynth.config import Settings
from imagesynth.engine.memory import keep_freed_memory
from imagesynth.runtime import Runtime, configure_logging

app = typer.Typer(help="Self-hosted text-to-image, wire-compatible with DashScope.")
keys_app = typer.Typer(help="Manage API keys.")
models_app = typer.Typer(help="Inspect the model catalog and demo weights.")
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")

log = logging.getLogger("imagesynth")


def _runtime() -> Runtime:
    settings = Settings()
    configure_logging(settings.log_level)
    return Runtime.open(settings)


def _first_key_banner(secret: str, base: str) -> str:
    return f"""
================================================================================
 No API keys existed, so one was created. It is shown only this once:

     {secret}

 Try it with the official SDK (pip install dashscope):

     import dashscope
     from dashscope import ImageSynthesis
     dashscope.base_http_api_url = "{base}/api/v1"
     dashscope.api_key = "{secret}"
     rsp = ImageSynthesis.call(model="wan2.2-t2i-flash", prompt="a red fox in snow",
                               n=1, size="1024*1024")
     print(rsp.output.results[0].url)

 More keys: imagesynth keys create --name NAME
================================================================================
"""


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Serve the API only; run workers separately.")
    ] = False,
) -> None:
    """Run the HTTP API, with an in-process worker unless --no-worker."""
    import uvicorn

    from imagesynth.api.app import create_app

    if not no_worker:
        keep_freed_memory()  # before any thread starts: see engine/memory.py
    rt = _runtime()
    services = rt.services()
    if not rt.store.list_keys():
        _, secret = services.keys.create("first-start")
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        print(_first_key_banner(secret, f"http://{shown}:{port}"), flush=True)

    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start_background() -> None:
        threads.append(rt.maintenance().start(stop, rt.settings.maintenance_interval_seconds))
        if not no_worker:
            thread = threading.Thread(
                target=rt.worker().run, args=(stop,), name="worker", daemon=True
            )
            thread.start()
            threads.append(thread)

    def stop_background() -> None:
        stop.set()
        for thread in threads:
            # The worker stops at its next denoising step and hands its task back.
            thread.join(timeout=60)

    log.info("model catalog: %s", rt.catalog.source)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(services, on_startup=start_background, on_shutdown=stop_background),
            host=host,
            port=port,
            log_level=rt.settings.log_level.lower(),
            access_log=False,
        )
    )
    server.run()


@app.command()
def worker(
    models: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Serve only this model (repeatable)."),
    ] = None,
) -> None:
    """Run a worker process on the same state as the service (same IMAGESYNTH_HOME/database)."""
    keep_freed_memory()  # before any thread starts: see engine/memory.py
    rt = _runtime()
    for name in models or []:
        rt.catalog.get(name)
    stop = threading.Event()
    rt.maintenance().start(stop, rt.settings.maintenance_interval_seconds)
    w = rt.worker(models)

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: finishing", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    w.run(stop)


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name to recognise the key by.")] = "default",
) -> None:
    """Create an API key and print it (it is stored hashed and shown only now)."""
    rt = _runtime()
    _, secret = rt.services().keys.create(name)
    print(secret)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (names and prefixes; the secrets are not stored)."""
    rt = _runtime()
    for key in rt.store.list_keys():
        state = "revoked" if key.revoked_at else "active"
        print(f"{key.id}  {key.prefix}…  {key.name}  {state}")


@models_app.command("list")
def models_list() -> None:
    """Which models are served, from what weights, demo or real."""
    rt = _runtime()
    demo_root = rt.settings.resolved_demo_weights_dir
    print(f"catalog: {rt.catalog.source}")
    print(f"{'model':<20} {'family':<17} {'kind':<5} {'device/dtype':<12} weights")
    for spec in rt.catalog.models.values():
        kind = "DEMO" if spec.is_demo else "real"
        weights = spec.engine_spec(demo_root).weights
        print(
            f"{spec.name:<20} {spec.family:<17} {kind:<5} {spec.device + '/' + spec.dtype:<12} "
            f"{weights}"
        )
    if any(s.is_demo for s in rt.catalog.models.values()):
        print(
            "\nDEMO weights are tiny random-weight pipelines built offline: their images are "
            "noise.\nSet real weights in the catalog (see README) to generate real images."
        )


@models_app.command("make-demo")
def models_make_demo(
    directory: Annotated[Path, typer.Argument(help="Folder to build the demo weights in.")],
) -> None:
    """Build the tiny offline demo pipelines (one per family) into DIRECTORY."""
    from imagesynth.engine.demo import build_demo_weights

    configure_logging("INFO")
    for family, path in build_demo_weights(directory.expanduser().resolve()).items():
        print(f"{family}: {path}")


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    model: Annotated[str, typer.Option(help="Model name.")] = "wan2.2-t2i-flash",
    size: Annotated[str | None, typer.Option(help="W*H, e.g. 1024*1024.")] = None,
    n: Annotated[int | None, typer.Option("-n", help="Number of images.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed; image i uses seed+i.")] = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps.")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="What to avoid.")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the PNGs.")] = Path(
        "."
    ),
    base_url: Annotated[
        str,
        typer.Option(envvar="IMAGESYNTH_BASE_URL", help="The service's API base URL."),
    ] = "http://127.0.0.1:8000/api/v1",
    api_key: Annotated[
        str | None,
        typer.Option(envvar=["IMAGESYNTH_API_KEY", "DASHSCOPE_API_KEY"], help="API key."),
    ] = None,
) -> None:
    """Submit to a running service, show progress, save the PNGs."""
    from imagesynth.client import GenerateRequest, run_generate

    if not api_key:
        print("error: no API key: pass --api-key or set IMAGESYNTH_API_KEY", file=sys.stderr)
        raise typer.Exit(2)
    request = GenerateRequest(
        model=model,
        prompt=prompt,
        negative_prompt=negative_prompt,
        size=size,
        n=n,
        seed=seed,
        steps=steps,
    )
    started = time.monotonic()
    paths = run_generate(base_url, api_key, request, output)
    for path in paths:
        print(path)
    print(f"{len(paths)} image(s) in {time.monotonic() - started:.1f}s", file=sys.stderr)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
