"""Settings: every knob of imagesynth, read once from the environment (prefix IMAGESYNTH_).

Nothing else in the package reads os.environ; build one Settings in the entry point and pass
it down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGESYNTH_", extra="ignore")

    home: Path = Field(default=Path("~/.imagesynth"), description="All state lives here.")
    database_url: str | None = Field(
        default=None,
        description="sqlite:///PATH or postgresql://...; default sqlite under home.",
    )
    catalog: Path | None = Field(
        default=None, description="Model catalog TOML; default home/catalog.toml if present."
    )
    demo_weights_dir: Path | None = Field(
        default=None, description="Where demo weights are built; default home/demo-weights."
    )
    weights_dir: Path | None = Field(
        default=None,
        description='A folder of real weights for weights = "auto": a model whose repo is '
        "org/name runs DIR/org/name (or DIR/name) when that holds its pipeline; else the "
        "Hugging Face cache (imagesynth models pull), else the demo weights.",
    )
    gpu_memory_gb: float | None = Field(
        default=None,
        gt=0,
        description="GPU memory (GB, 10^9 bytes) that each model's weights are held against "
        "when a worker starts, instead of what the device has free: e.g. a share of a GPU "
        "that other processes use too. Models that do not fit are not served.",
    )
    public_url: str | None = Field(
        default=None,
        description="Base URL put in result links, e.g. https://img.example.com; "
        "default: the URL the client called.",
    )
    url_secret: SecretStr | None = Field(
        default=None, description="HMAC key for signed URLs; default a random key in home/secret."
    )
    url_ttl_seconds: int = Field(default=86_400, ge=1)
    storage_url: str | None = Field(
        default=None,
        description="Where result images and uploads live: s3://bucket/prefix (an "
        "S3-compatible bucket, reached with the standard AWS_* settings); default the local "
        "disk under home/files.",
    )
    s3_urls: Literal["presigned", "proxy"] = Field(
        default="presigned",
        description="How clients download from an S3 store: presigned (URLs of the bucket, "
        "valid for url_ttl_seconds but at most 7 days) or proxy (the API's own signed /files/ "
        "URLs, served through the API).",
    )
    retention_seconds: int = Field(default=86_400, ge=1)
    lease_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    maintenance_interval_seconds: float = Field(default=2.0, gt=0)
    worker_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often idle workers and synchronous callers look at the queue when "
        "no wake-up reached them (wake-ups: in-process events; PostgreSQL LISTEN/NOTIFY "
        "across processes). The fallback, not the latency.",
    )
    worker_postprocess_threads: int = Field(
        default=2,
        ge=1,
        description="Post-processing jobs (image check, labels, encode, store) a worker runs "
        "at once, beside its engine.",
    )
    worker_postprocess_queue: int = Field(
        default=2,
        ge=1,
        description="Tasks whose images may wait for post-processing per worker (each holds "
        "its decoded images in memory); the engine waits when they are this many.",
    )
    sync_timeout_seconds: float = Field(default=600.0, gt=0)
    openai_default_model: str = Field(
        default="wan2.2-t2i-flash",
        description="The model of an OpenAI Images request that names none (POST "
        "/v1/images/generations); a catalog name.",
    )
    max_request_bytes: int = Field(default=1 << 20, ge=1024)
    fetch_timeout_seconds: float = Field(default=10.0, gt=0)
    fetch_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    fetch_allow_networks: str = Field(
        default="",
        description="Comma-separated CIDRs that reference-image fetches and webhook deliveries "
        "may reach although private (e.g. an intranet image host). Empty: public addresses "
        "only.",
    )
    upload_ttl_seconds: int = Field(default=48 * 3600, ge=60)
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Time one webhook delivery attempt may take."
    )
    webhook_retry_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Delay before a failed webhook delivery's first retry; it doubles with each "
        "further attempt (with +-25% jitter) up to IMAGESYNTH_WEBHOOK_RETRY_MAX_SECONDS.",
    )
    webhook_retry_max_seconds: float = Field(
        default=3600.0, gt=0, description="The longest delay between two webhook attempts."
    )
    webhook_give_up_seconds: float = Field(
        default=86_400.0,
        gt=0,
        description="A webhook delivery still failing this long after its task ended is "
        "marked failed (listed by GET /admin/v1/webhooks/deliveries?status=failed).",
    )
    webhook_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often the webhook sender looks for due deliveries when no task end "
        "woke it (retries, and ends in other processes on SQLite).",
    )
    webhook_concurrency: int = Field(
        default=4, ge=1, description="Webhook deliveries in flight at once per API process."
    )
    max_reference_decodes: int = Field(
        default=2,
        ge=1,
        description="Reference images decoded at once per API process (each needs up to "
        "~64 MB while it is decoded); further submissions wait their turn.",
    )
    max_pending_per_key: int = Field(
        default=100, ge=1, description="Tasks one key may have waiting (429 beyond it)."
    )
    query_rps: float = Field(
        default=20.0, gt=0, description="Query, list and cancel requests per second per key."
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Credential for the admin API (/admin/v1); default a random token kept "
        "in home/admin-token.",
    )
    label_producer: str = Field(
        default="imagesynth",
        min_length=1,
        description="ContentProducer in every image's AIGC label (your service's name or code).",
    )
    invisible_watermark: bool | None = Field(
        default=None,
        description="Embed the invisible watermark in every image; unset: when its packages "
        "are installed (scripts/setup.sh installs them); true: required.",
    )
    rewriter: Literal["none", "openai", "local"] | None = Field(
        default=None,
        description="Prompt rewriter for prompt_extend: openai (an OpenAI-compatible chat "
        "endpoint), local (a transformers causal LM folder) or none. Unset: openai when "
        "rewriter_base_url is set, local when rewriter_path is set, else none.",
    )
    rewriter_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1 (vLLM), "
        "http://127.0.0.1:11434/v1 (Ollama), https://dashscope.aliyuncs.com/compatible-mode/v1.",
    )
    rewriter_api_key: SecretStr | None = Field(
        default=None, description="Bearer key for rewriter_base_url, if it needs one."
    )
    rewriter_model: str | None = Field(
        default=None, description="Model name sent to rewriter_base_url, e.g. qwen-plus."
    )
    rewriter_path: Path | None = Field(
        default=None, description="Folder of a local transformers causal LM (save_pretrained)."
    )
    rewriter_device: str = Field(default="cpu", description="torch device of the local rewriter.")
    rewriter_timeout_seconds: float = Field(
        default=20.0,
        gt=0,
        description="Longest a rewrite may take, all attempts included; then the original "
        "prompt is used.",
    )
    rewriter_attempts: int = Field(
        default=2, ge=1, le=10, description="Tries per rewrite (on timeouts, 429 and 5xx)."
    )
    blocked_terms_file: Path | None = Field(
        default=None,
        description="Extra blocked terms for prompts (one per line, # comments), added to the "
        "built-in Chinese and English lists.",
    )
    allowed_terms_file: Path | None = Field(
        default=None,
        description="Phrases that are never blocked although they contain a blocked term "
        "(e.g. 'nude lipstick'); listing a term itself turns it off.",
    )
    safety_categories_off: str = Field(
        default="",
        description="Comma-separated content categories not to block: shipped term-list "
        "categories (sexual, sexual_violence, gore, terrorism, hate, self_harm, drugs, "
        "extremism; never minors), an operator file's [category], or a guard model's "
        "category (e.g. politically_sensitive_topics).",
    )
    guard: Literal["none", "chat", "moderations", "local"] | None = Field(
        default=None,
        description="Prompt guard model, a second layer after the term lists: chat (a guard "
        "model's OpenAI-compatible chat endpoint, e.g. vLLM serving Qwen3Guard-Gen) or "
        "moderations (POST /moderations), both at submit in the API process; local (a "
        "transformers guard model folder), in the workers before generation; or none. Unset: "
        "chat when guard_base_url is set, local when guard_path is set, else none.",
    )
    guard_base_url: str | None = Field(
        default=None, description="OpenAI-compatible API base of the guard, e.g. .../v1."
    )
    guard_api_key: SecretStr | None = Field(
        default=None, description="Bearer key for guard_base_url, if it needs one."
    )
    guard_model: str | None = Field(
        default=None, description="Model name sent to guard_base_url, e.g. Qwen3Guard-Gen-0.6B."
    )
    guard_path: Path | None = Field(
        default=None, description="Folder of a local transformers guard model (save_pretrained)."
    )
    guard_device: str = Field(default="cpu", description="torch device of the local guard.")
    guard_timeout_seconds: float = Field(
        default=3.0,
        gt=0,
        description="Longest the guard may take per prompt; then guard_fail decides.",
    )
    guard_fail: Literal["open", "closed"] = Field(
        default="open",
        description="When the guard gives no verdict (timeout, error, unreadable reply): open "
        "lets the prompt through (the term lists and image classifier still apply), closed "
        "rejects it with DataInspectionFailed.",
    )
    guard_block_controversial: bool = Field(
        default=False,
        description="Block prompts the guard calls Controversial, not only Unsafe.",
    )
    image_safety: Literal["auto", "nudenet", "opennsfw", "none"] = Field(
        default="auto",
        description="Classifier for generated images: auto uses nudenet if installed, else "
        "opennsfw (installed with imagesynth), else none.",
    )
    image_safety_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Score at which an image is withheld; unset: the classifier's default "
        "(nudenet 0.5, opennsfw 0.8).",
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text: one readable line per record; json: one JSON object per line "
        "(time, level, logger, message, exc_info).",
    )

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'imagesynth.db'}"

    @property
    def resolved_catalog(self) -> Path | None:
        if self.catalog is not None:
            return self.catalog.expanduser().resolve()
        candidate = self.home_dir / "catalog.toml"
        return candidate if candidate.exists() else None

    @property
    def resolved_demo_weights_dir(self) -> Path:
        return (self.demo_weights_dir or self.home_dir / "demo-weights").expanduser().resolve()

    @property
    def weights_dirs(self) -> tuple[Path, ...]:
        return () if self.weights_dir is None else (self.weights_dir.expanduser().resolve(),)

    @property
    def memory_budget(self) -> int | None:
        """gpu_memory_gb in bytes."""
        return None if self.gpu_memory_gb is None else int(self.gpu_memory_gb * 1e9)

    @property
    def blobs_dir(self) -> Path:
        return self.home_dir / "files"
