"""Settings: every knob of imagesynth, read once from the environment (prefix IMAGESYNTH_).

Nothing else in the package reads os.environ; build one Settings in the entry point and pass
it down.
"""

from __future__ import annotations

from pathlib import Path

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
    public_url: str | None = Field(
        default=None,
        description="Base URL put in result links, e.g. https://img.example.com; "
        "default: the URL the client called.",
    )
    url_secret: SecretStr | None = Field(
        default=None, description="HMAC key for signed URLs; default a random key in home/secret."
    )
    url_ttl_seconds: int = Field(default=86_400, ge=1)
    retention_seconds: int = Field(default=86_400, ge=1)
    lease_seconds: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    maintenance_interval_seconds: float = Field(default=2.0, gt=0)
    worker_poll_seconds: float = Field(default=0.2, gt=0)
    sync_timeout_seconds: float = Field(default=600.0, gt=0)
    max_request_bytes: int = Field(default=1 << 20, ge=1024)
    fetch_timeout_seconds: float = Field(default=10.0, gt=0)
    fetch_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    fetch_allow_networks: str = Field(
        default="",
        description="Comma-separated CIDRs that reference-image fetches may reach although "
        "private (e.g. an intranet image host). Empty: public addresses only.",
    )
    upload_ttl_seconds: int = Field(default=48 * 3600, ge=60)
    log_level: str = "INFO"

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
    def blobs_dir(self) -> Path:
        return self.home_dir / "files"
