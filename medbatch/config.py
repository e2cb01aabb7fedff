"""Settings: the only module that reads ``os.environ``.

Every value comes from a ``MEDBATCH_``-prefixed environment variable or a ``.env`` file in the
working directory; lower layers receive plain values, never this object.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Broker used when none is configured: a Redis on this host (``medbatch demo`` starts one if absent).
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
#: Database used when none is configured: a SQLite file in the working directory.
DEFAULT_DATABASE_URL = "sqlite:///medbatch.db"
#: Items per batch message: large enough to amortise task overhead, small enough to retry cheaply.
DEFAULT_BATCH_SIZE = 500
#: Seconds Redis waits for an ack before re-delivering a message to another worker. It must exceed
#: the slowest batch; a re-delivery is harmless (writes are idempotent) but costs time.
DEFAULT_VISIBILITY_TIMEOUT_S = 3600
#: Attempts before a batch whose worker keeps dying or failing is dead-lettered.
DEFAULT_MAX_ATTEMPTS = 5

PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "password", "admin"}


class Settings(BaseSettings):
    """medbatch configuration, validated once at start-up."""

    model_config = SettingsConfigDict(env_prefix="MEDBATCH_", env_file=".env", extra="ignore")

    environment: str = Field("development", description="development | production")
    broker_url: str = DEFAULT_BROKER_URL
    database_url: str = DEFAULT_DATABASE_URL
    model_dir: Path = Path("models")
    input_roots: str = Field(
        "", description="directories producers may read, comma-separated; empty: any in development, none in production"
    )
    results_dir: Path = Path("results")
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1, le=100_000)
    visibility_timeout_s: int = Field(DEFAULT_VISIBILITY_TIMEOUT_S, ge=10)
    max_attempts: int = Field(DEFAULT_MAX_ATTEMPTS, ge=1, le=100)
    task_retry_backoff_max_s: int = Field(600, ge=1)
    reconcile_after_s: int = Field(
        DEFAULT_VISIBILITY_TIMEOUT_S + 300, ge=1, description="a batch untouched this long is re-sent"
    )
    worker_stall_s: int = Field(900, ge=1, description="work waiting and no task finished this long = unhealthy")
    reconcile_interval_s: int = Field(300, ge=10, description="how often beat runs the reconciler")
    log_level: str = "INFO"
    flower_port: int = 5555
    flower_basic_auth: str = Field("", description="user:password for Flower; required in production")

    # Report generation (LLM). The SDK's own OPENAI_API_KEY / OPENAI_BASE_URL are honoured too.
    llm_provider: str = Field("auto", description="auto (openai when a key is set, else offline) | openai | offline")
    openai_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("MEDBATCH_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        None, validation_alias=AliasChoices("MEDBATCH_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )
    llm_model: str = "gpt-4o-mini"
    llm_temperature: float = Field(0.2, ge=0, le=2)
    llm_max_tokens: int = Field(600, ge=16, le=32_000)
    llm_timeout_s: float = Field(60.0, gt=0)
    llm_max_attempts: int = Field(4, ge=1, le=20, description="tries per report before it is an item error")
    llm_requests_per_minute: int = Field(500, ge=1, description="global, shared by every worker through Redis")
    llm_tokens_per_minute: int = Field(200_000, ge=100, description="global, shared by every worker")
    llm_prices_json: str = Field("", description='{"model": [usd_per_mtok_in, usd_per_mtok_out]} overrides')
    report_batch_size: int = Field(5, ge=1, le=1000, description="reports per message (small: calls are slow)")
    report_poll_interval_s: float = Field(60.0, gt=0, description="Batch API polling interval (overnight mode)")

    # Imaging (X-ray) workload.
    imaging_batch_size: int = Field(64, ge=1, le=10_000, description="images per message")
    imaging_predict_batch: int = Field(32, ge=1, le=1024, description="images per compiled model call")
    imaging_decode_threads: int = Field(4, ge=1, le=64, description="threads decoding images in a worker")
    imaging_max_pixels: int = Field(134_217_728, ge=1, description="largest image decoded, pixels per frame")
    imaging_max_file_mb: int = Field(512, ge=1, description="largest image file read, MiB")
    imaging_modalities: str = Field("CR,DX,DR,RG", description="DICOM modalities accepted as radiographs")
    # Guard against slow memory growth in long-lived pool children (TensorFlow, image decoders).
    worker_max_memory_per_child_mb: int = Field(
        6144, ge=0, description="replace a pool child after a task leaves it above this RSS; 0 = never"
    )

    def allowed_input_roots(self) -> tuple[Path, ...] | None:
        """The directories producers may read; ``None`` (no restriction) only in development with none set.

        Production with no root configured returns ``()``, which refuses every input path.
        """
        roots = tuple(Path(p.strip()).expanduser() for p in self.input_roots.split(",") if p.strip())
        if not roots and self.environment != "production":
            return None
        return roots

    # The nightly run (`medbatch nightly`, or beat at nightly_hour:nightly_minute in `timezone`).
    timezone: str = Field("UTC", description="IANA time zone for beat schedules and for when a night starts")
    nightly_inbox: Path | None = Field(None, description="folder the nightly run takes new inputs from")
    nightly_hour: int = Field(1, ge=0, le=23, description="hour (in `timezone`) beat starts the nightly run")
    nightly_minute: int = Field(0, ge=0, le=59)
    nightly_settle_s: int = Field(120, ge=0, description="files modified more recently are left for the next run")
    nightly_timeout_s: int = Field(6 * 3600, ge=60, description="how long `nightly` waits for its jobs")
    summary_hour: int = Field(7, ge=0, le=23, description="hour (in `timezone`) beat writes last night's summary")

    def modality_list(self) -> tuple[str, ...]:
        """:attr:`imaging_modalities` as upper-case codes."""
        return tuple(m.strip().upper() for m in self.imaging_modalities.split(",") if m.strip())

    def resolved_llm_provider(self) -> str:
        """``openai`` when chosen, or when ``auto`` and an API key is set; ``offline`` otherwise."""
        if self.llm_provider == "auto":
            return "openai" if self.openai_api_key else "offline"
        return self.llm_provider

    @field_validator("llm_provider")
    @classmethod
    def _provider(cls, value: str) -> str:
        if value not in ("auto", "openai", "offline"):
            raise ValueError("llm_provider must be auto, openai or offline")
        return value

    @field_validator("nightly_inbox", mode="before")
    @classmethod
    def _blank_is_none(cls, value):
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as Europe/Berlin") from None
        return value

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> Settings:
        if self.environment == "production":
            for url in (self.broker_url, self.database_url):
                password = urlsplit(url).password
                if password and password.lower() in PLACEHOLDER_SECRETS:
                    raise ValueError(f"placeholder password in {redact_url(url)}: set a real secret for production")
            if self.flower_basic_auth:
                password = self.flower_basic_auth.partition(":")[2]
                if password.lower() in PLACEHOLDER_SECRETS:
                    raise ValueError("placeholder Flower password: set MEDBATCH_FLOWER_BASIC_AUTH for production")
        return self


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, safe for logs and terminals."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    host = netloc[-1]
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


_URL_PASSWORD = re.compile(r"(://[^/\s:@]*:)[^@\s]+@")


def redact_text(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (for error messages from libraries)."""
    return _URL_PASSWORD.sub(r"\1***@", text)


def error_reason(exc: BaseException) -> str:
    """``Type: first line of the message``, passwords in URLs redacted: a short, safe cause for a person."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return redact_text(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
