"""The `imagesynth` command: serve, worker, keys, models, generate, inspect."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from imagesynth.accounts.settings import CHANGE_FIELDS
from imagesynth.config import Settings
from imagesynth.runtime import Runtime, configure_logging
from imagesynth.worker.memory import keep_freed_memory

app = typer.Typer(help="Self-hosted text-to-image, wire-compatible with DashScope.")
keys_app = typer.Typer(help="Manage API keys.")
models_app = typer.Typer(help="The model catalog, its weights: list, pull, make-demo.")
webhook_app = typer.Typer(help="A key's signed webhooks (docs/webhooks.md).")
app.add_typer(keys_app, name="keys")
keys_app.add_typer(webhook_app, name="webhook")
app.add_typer(models_app, name="models")

log = logging.getLogger("imagesynth")


def _runtime() -> Runtime:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    from imagesynth.errors import StorageUnavailable

    try:
        return Runtime.open(settings)
    except StorageUnavailable as exc:  # a wrong bucket or endpoint: one line, no traceback
        print(f"error: {exc.message}", file=sys.stderr)
        raise typer.Exit(1) from None


def _first_key_banner(secret: str, base: str) -> str:
    return f"""
================================================================================
 No API keys existed, so one was created. It is shown only this once:

     {secret}

 Web console: open {base}/ and paste the key above.

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


def _console_base(public_url: str | None, host: str, port: int) -> str:
    """Where a person on this machine opens the service: the public URL when one is set, else
    the listening address (a wildcard one shown as loopback; an IPv6 one in brackets)."""
    if public_url:
        return public_url.rstrip("/")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def _prompt_stage_line(rt: Runtime, *, api: bool, worker: bool) -> str:
    """The startup log's word on prompt_extend in this process."""
    if rt.prompt_stage_runs_here(api=api, worker=worker):
        return rt.rewriter.describe()
    if rt.rewriter_kind == "local":
        return (
            "prompt_extend: the local LM rewriter runs in worker processes "
            "(`imagesynth worker`), never in an API-only process"
        )
    if rt.rewriter_kind == "openai":
        return "prompt_extend: the remote rewriter's prompt stage runs in the API processes"
    return rt.rewriter.describe()


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
    from imagesynth.api.server import server_config

    if not no_worker:
        keep_freed_memory()  # before any thread starts: see worker/memory.py
    rt = _runtime()
    services = rt.services()
    base = _console_base(rt.settings.public_url, host, port)
    local_url = _console_base(None, host, port)  # where this process listens
    if not services.keys.all():
        _, secret = services.keys.create("first-start")
        print(_first_key_banner(secret, base), flush=True)

    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start_background() -> None:
        threads.append(rt.maintenance().start(stop, rt.settings.maintenance_interval_seconds))
        # Result links in webhook bodies: IMAGESYNTH_PUBLIC_URL, else where this one listens.
        threads.append(rt.webhook_sender(local_url).start(stop))
        if rt.prompt_stage_runs_here(api=True, worker=not no_worker):
            threads.extend(rt.prompt_stage().start(stop))
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

    log.info("web console: %s/ (paste an API key; operator pages take the admin credential)", base)
    log.info("model catalog: %s", rt.catalog.source)
    for line in rt.describe_weights():
        log.info("weights: %s", line)
    log.info(_prompt_stage_line(rt, api=True, worker=not no_worker))
    log.info(rt.term_filter.describe())
    log.info(rt.describe_guard(worker=False))
    if rt.settings.admin_token is None:
        log.info("admin API (/admin/v1) credential: `imagesynth admin-token`")
    server = uvicorn.Server(
        server_config(
            create_app(services, on_startup=start_background, on_shutdown=stop_background),
            host=host,
            port=port,
            log_level=rt.settings.log_level.lower(),
        )
    )
    server.run()


@app.command()
def worker(
    models: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="Serve only this model (repeatable)."),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="Run every model on this device (cuda:N, cuda, cpu): a worker per GPU."),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve this worker's Prometheus metrics on this port (/metrics)."),
    ] = None,
) -> None:
    """Run a worker process on the same state as the service (same IMAGESYNTH_HOME/database)."""
    keep_freed_memory()  # before any thread starts: see worker/memory.py
    rt = _runtime()
    for name in models or []:
        rt.catalog.get(name)
    for line in rt.describe_weights(models):
        log.info("weights: %s", line)
    stop = threading.Event()
    rt.maintenance().start(stop, rt.settings.maintenance_interval_seconds)
    log.info(_prompt_stage_line(rt, api=False, worker=True))
    if rt.prompt_stage_runs_here(api=False, worker=True):
        rt.prompt_stage().start(stop)
    w = rt.worker(models, device=device)
    if metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, registry=w.metrics.registry)
        log.info("worker metrics on :%d/metrics", metrics_port)

    def on_signal(signum: int, frame: object) -> None:
        log.info("signal %d: finishing", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    w.run(stop)


# Options shared by `keys create` and `keys set` (None: leave as it is), named as the
# settings they change (accounts.settings.CHANGE_FIELDS).
FreeTierOnly = Annotated[
    bool | None,
    typer.Option(
        "--free-tier-only/--paid",
        help="Refuse work the free quota cannot cover (403 AllocationQuota.FreeTierOnly), "
        "or allow paid use after it.",
    ),
]
MonthlyCap = Annotated[
    str | None,
    typer.Option(help="Spending cap per calendar month in the catalog's currency; 'none' clears."),
]
MaxPending = Annotated[int | None, typer.Option(help="Tasks this key may have waiting.")]
ForModel = Annotated[
    str | None, typer.Option("--model", "-m", help="--rps/--in-flight/--free-quota for this model.")
]
Rps = Annotated[float | None, typer.Option(help="Submissions per second (per model).")]
InFlight = Annotated[int | None, typer.Option(help="Tasks running at once (per model).")]
FreeQuota = Annotated[int | None, typer.Option(help="Free images (per model).")]


def _changes(options: dict[str, object]) -> dict[str, object]:
    """The key settings a command's options change (its other arguments left out)."""
    changes = {k: v for k, v in options.items() if k in CHANGE_FIELDS and v is not None}
    if changes.get("monthly_cap") == "none":
        changes["monthly_cap"] = None
    return changes


def _admin_call(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run an admin operation; print a domain error as a one-line message, exit status 1."""
    from imagesynth.errors import ImageSynthError

    try:
        return fn(*args, **kwargs)
    except ImageSynthError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise typer.Exit(1) from None


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A name to recognise the key by.")] = "default",
    free_tier_only: FreeTierOnly = None,
    monthly_cap: MonthlyCap = None,
    max_pending: MaxPending = None,
    model: ForModel = None,
    rps: Rps = None,
    in_flight: InFlight = None,
    free_quota: FreeQuota = None,
) -> None:
    """Create an API key and print it (it is stored hashed and shown only now)."""
    admin = _runtime().admin()
    changes = _changes(locals())
    _, secret = _admin_call(admin.create, name, changes)
    print(secret)


@keys_app.command("list")
def keys_list() -> None:
    """List keys: id, prefix, name, status, created, last used (the secrets are not stored)."""
    admin = _runtime().admin()
    print(f"{'id':<36}  {'prefix':<8} {'name':<16} {'status':<7} {'created':<19}  last used")
    for key in admin.all_keys():
        d = admin.describe(key)
        print(
            f"{d['id']:<36}  {d['prefix'] + '…':<8} {d['name']:<16} {d['status']:<7} "
            f"{d['created_at']:<19}  {d['last_used_at'] or 'never'}"
        )


@keys_app.command("show")
def keys_show(ref: Annotated[str, typer.Argument(help="Key id, name or prefix.")]) -> None:
    """A key's settings and, per model, its limits, price and free images left (JSON)."""
    import json

    admin = _runtime().admin()
    print(json.dumps(_admin_call(admin.show, ref), indent=2, ensure_ascii=False))


@keys_app.command("revoke")
def keys_revoke(ref: Annotated[str, typer.Argument(help="Key id, name or prefix.")]) -> None:
    """Revoke a key: its next request gets 401 InvalidApiKey."""
    key = _admin_call(_runtime().admin().revoke, ref)
    print(f"revoked {key.id} ({key.name})")


@keys_app.command("set")
def keys_set(
    ref: Annotated[str, typer.Argument(help="Key id, name or prefix.")],
    free_tier_only: FreeTierOnly = None,
    monthly_cap: MonthlyCap = None,
    max_pending: MaxPending = None,
    model: ForModel = None,
    rps: Rps = None,
    in_flight: InFlight = None,
    free_quota: FreeQuota = None,
) -> None:
    """Change a key's limits, free quota or spending cap."""
    import json

    admin = _runtime().admin()
    changes = _changes(locals())
    key = _admin_call(admin.change, ref, changes)
    print(json.dumps(admin.describe(key), indent=2, ensure_ascii=False))


KeyRef = Annotated[str, typer.Argument(help="Key id, name or prefix.")]


@webhook_app.command("add")
def webhook_add(
    ref: KeyRef,
    url: Annotated[str, typer.Argument(help="http(s) URL on a public address.")],
    event: Annotated[
        list[str] | None,
        typer.Option(
            "--event",
            "-e",
            help="Only this event (repeatable; default all): task.succeeded, "
            "task.failed, task.canceled.",
        ),
    ] = None,
) -> None:
    """Register an endpoint sent the key's task ends; prints its id and secret (shown once)."""
    endpoint, secret = _admin_call(_runtime().webhook_admin().add, ref, url, event)
    print(f"{endpoint.id}  {endpoint.url}")
    print(secret)


@webhook_app.command("list")
def webhook_list(ref: KeyRef) -> None:
    """The key's endpoints: id, events, URL."""
    for endpoint in _admin_call(_runtime().webhook_admin().endpoints, ref):
        d = endpoint.to_json()
        print(f"{d['id']}  {','.join(d['events'])}  {d['url']}")


@webhook_app.command("remove")
def webhook_remove(
    ref: KeyRef, endpoint_id: Annotated[str, typer.Argument(help="The endpoint's id (ep_...).")]
) -> None:
    """Forget an endpoint; its deliveries not yet made fail."""
    _admin_call(_runtime().webhook_admin().remove, ref, endpoint_id)
    print(f"removed {endpoint_id}")


@webhook_app.command("secret")
def webhook_secret(ref: KeyRef) -> None:
    """The secret that signs deliveries to the callback URLs of the key's submissions."""
    print(_admin_call(_runtime().webhook_admin().callback_secret, ref))


@webhook_app.command("deliveries")
def webhook_deliveries(
    ref: Annotated[str | None, typer.Argument(help="Only this key's (id, name or prefix).")] = None,
    status: Annotated[str | None, typer.Option(help="pending, delivered or failed.")] = "failed",
    task_id: Annotated[str | None, typer.Option(help="Only this task's.")] = None,
) -> None:
    """Deliveries (by default the failed ones), newest first, with each attempt's log (JSON)."""
    import json

    rows = _admin_call(
        _runtime().webhook_admin().deliveries, status=status, key=ref, task_id=task_id
    )
    print(json.dumps([d.to_json() for d in rows], indent=2, ensure_ascii=False))


@app.command()
def usage(
    key: Annotated[str | None, typer.Option(help="Only this key (id, name or prefix).")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    since: Annotated[
        str | None, typer.Option(help="From this time: 2026-11-01, 2026-11-01T08:00, 24h, 7d.")
    ] = None,
    by: Annotated[str | None, typer.Option(help="Split by hour or day.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON rows.")] = False,
) -> None:
    """Calls, outcomes, images, free images left and amount charged per key and model."""
    import json

    admin = _runtime().admin()
    rows = _admin_call(admin.usage, key=key, model=model, since=since, by=by)
    currency = admin.catalog.billing.currency
    if as_json:
        print(json.dumps([r.to_json(currency) for r in rows], indent=2, ensure_ascii=False))
        return
    print(
        f"{'period':<16} {'key':<16} {'model':<18} {'calls':>5} {'ok':>4} {'fail':>4} "
        f"{'canc':>4} {'run':>4} {'images':>6} {'free':>5} {'rate':>5} {'free left':>9} "
        f"{'amount ' + currency:>12}"
    )
    for r in rows:
        d = r.to_json(currency)
        rate = "-" if r.success_rate is None else f"{100 * r.success_rate:.0f}%"
        print(
            f"{r.period or 'all':<16} {r.key_name[:16]:<16} {r.model:<18} {r.calls:>5} "
            f"{r.succeeded:>4} {r.failed:>4} {r.canceled:>4} {r.in_progress:>4} {r.images:>6} "
            f"{r.free_images:>5} {rate:>5} {r.free_images_left:>9} {d['amount']:>12}"
        )


@app.command("admin-token")
def admin_token() -> None:
    """Print the admin API's credential (Authorization: Bearer <token> on /admin/v1)."""
    print(_runtime().admin().token)


@models_app.command("list")
def models_list(
    memory_budget: Annotated[
        float | None,
        typer.Option(
            "--memory-budget",
            help="GB of GPU memory to check each model against (default: "
            "IMAGESYNTH_GPU_MEMORY_GB, else what the GPU has free).",
        ),
    ] = None,
) -> None:
    """Which models are served, from what weights (real or demo), and whether they fit."""
    from imagesynth.worker.engines import engine_spec, fit_for

    rt = _runtime()
    demo_root = rt.settings.resolved_demo_weights_dir
    budget = int(memory_budget * 1e9) if memory_budget is not None else rt.settings.memory_budget
    print(f"catalog: {rt.catalog.source}")
    print(f"{'model':<20} {'family':<17} {'kind':<5} {'device/dtype':<12} weights")
    for spec in rt.catalog.models.values():
        kind = "DEMO" if spec.is_demo else "real"
        weights = engine_spec(spec, demo_root).weights
        print(
            f"{spec.name:<20} {spec.family:<17} {kind:<5} {spec.device + '/' + spec.dtype:<12} "
            f"{weights}"
        )
        print(f"{'':<20} fit: {fit_for(spec, demo_root, budget).describe()}")
    pulls = [c for c in rt.weights.values() if c.pull is not None]
    if any(s.is_demo for s in rt.catalog.models.values()):
        print(
            "\nDEMO weights are tiny random-weight pipelines built offline: their images are noise."
        )
    if pulls:
        print('Real weights, once pulled, are used from the next start on (weights = "auto"):')
        for choice in pulls:
            print(f"  {choice.pull:<48} # {choice.repo}")
    from imagesynth.safety.images import build_image_classifier

    print()
    print(rt.rewriter.describe())
    print(rt.term_filter.describe())
    print(rt.describe_guard(worker=False))
    print(build_image_classifier(rt.settings).describe())


@models_app.command("pull")
def models_pull(
    models: Annotated[
        list[str] | None, typer.Argument(help="Catalog model names (several share a repo).")
    ] = None,
    all_models: Annotated[
        bool, typer.Option("--all", help="Every model of the catalog that has a repo.")
    ] = False,
) -> None:
    """Download the real weights of catalog models into the Hugging Face cache.

    Only the files each pipeline needs; resumes an interrupted download; checks the disk
    first. HF_ENDPOINT, HF_TOKEN, HF_HOME and HF_HUB_CACHE are honoured."""
    from imagesynth.weights.hub import PullError, pull

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    from imagesynth.catalog import AUTO_WEIGHTS, Catalog, CatalogError
    from imagesynth.domain import Family
    from imagesynth.errors import ModelNotFound

    try:
        catalog = Catalog.load(settings.resolved_catalog)
        names = list(catalog.models) if all_models else list(models or [])
        if not names:
            print("error: name the models to pull, or --all", file=sys.stderr)
            raise typer.Exit(2)
        specs = [catalog.get(name) for name in names]
    except CatalogError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise typer.Exit(1) from None
    except ModelNotFound:
        print(f"error: unknown model; the catalog has {', '.join(catalog.models)}", file=sys.stderr)
        raise typer.Exit(2) from None
    repos: dict[tuple[str, Family], list[str]] = {}
    for spec in specs:
        if spec.repo is None:
            if not all_models:
                print(f"error: model {spec.name} has no repo key in the catalog", file=sys.stderr)
                raise typer.Exit(2)
            continue
        repos.setdefault((spec.repo, spec.family), []).append(spec.name)
    failed = 0
    for (repo, family), served in repos.items():
        try:
            path = pull(repo, family)
        except PullError as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            failed += 1
            continue
        print(f"{repo}: ready at {path} for {', '.join(served)}")
        for name in served:
            if catalog.get(name).weights != AUTO_WEIGHTS:
                print(
                    f"note: {name} has weights = {catalog.get(name).weights!r} in the catalog; "
                    'weights = "auto" (the default) would use this repo'
                )
    if repos and not failed:
        print("Restart `imagesynth serve` / `imagesynth worker` to use them.")
    if failed:
        raise typer.Exit(1)


@models_app.command("make-demo")
def models_make_demo(
    directory: Annotated[Path, typer.Argument(help="Folder to build the demo weights in.")],
) -> None:
    """Build the tiny offline demo pipelines (one per family) into DIRECTORY."""
    from imagesynth.engine.diffusers.demo import build_demo_weights

    configure_logging("INFO")
    for family, path in build_demo_weights(directory.expanduser().resolve()).items():
        print(f"{family}: {path}")


@app.command()
def doctor() -> None:
    """Check this machine: torch and CUDA, GPUs, each model's weights, database, storage,
    watermark, classifier, rewriter. Exits 1 when something essential fails."""
    from imagesynth.doctor import report

    settings = Settings()
    configure_logging("WARNING", settings.log_format)
    raise typer.Exit(report(settings))


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


@app.command()
def inspect(
    file: Annotated[Path, typer.Argument(help="A PNG or JPEG (any image Pillow reads).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Show an image's AIGC label, generation parameters and invisible watermark."""
    import json

    from PIL import UnidentifiedImageError

    from imagesynth.labels.inspect import inspect_file

    try:
        report = inspect_file(file)
    except (OSError, UnidentifiedImageError) as exc:
        print(f"error: cannot read {file}: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        print(report.to_text())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
