"""Settings: the only module that reads ``os.environ``.

Every value comes from a ``MEDBATCH_``-prefixed environment variable or a ``.env`` file in the
working directory; lower layers receive plain values, never this object.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from medbatch import defaults as d

PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "password", "admin"}


class Settings(BaseSettings):
    """medbatch configuration, validated once at start-up."""

    # hide_input_in_errors: a validation error would otherwise quote the input (URLs with their passwords)
    model_config = SettingsConfigDict(
        env_prefix="MEDBATCH_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    environment: str = Field(d.ENVIRONMENT, description="development | production")
    broker_url: str = d.BROKER_URL
    database_url: str = d.DATABASE_URL
    model_dir: Path = d.MODEL_DIR
    input_roots: str = Field(
        "", description="directories producers may read, comma-separated; empty: any in development, none in production"
    )
    results_dir: Path = d.RESULTS_DIR
    batch_size: int = Field(d.BATCH_SIZE_ITEMS, ge=1, le=100_000)
    visibility_timeout_s: int = Field(d.VISIBILITY_TIMEOUT_S, ge=10)
    max_attempts: int = Field(d.MAX_ATTEMPTS, ge=1, le=100)
    task_retry_backoff_max_s: int = Field(d.TASK_RETRY_BACKOFF_MAX_S, ge=1)
    reconcile_after_s: int = Field(d.RECONCILE_AFTER_S, ge=1, description="a batch untouched this long is re-sent")
    worker_stall_s: int = Field(
        d.WORKER_STALL_S, ge=1, description="work waiting and no task finished this long = unhealthy"
    )
    reconcile_interval_s: int = Field(d.RECONCILE_INTERVAL_S, ge=10, description="how often beat runs the reconciler")
    beat_schedule_file: Path | None = Field(
        None, description="where beat records when each entry last ran; default RESULTS_DIR/celerybeat-schedule"
    )
    log_level: str = d.LOG_LEVEL
    flower_port: int = d.FLOWER_PORT
    flower_basic_auth: str = Field("", description="user:password for Flower; required in production")

    # Report generation (LLM). The SDK's own OPENAI_API_KEY / OPENAI_BASE_URL are honoured too.
    llm_provider: str = Field(
        d.LLM_PROVIDER, description="auto (openai when a key is set, else offline) | openai | offline"
    )
    openai_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("MEDBATCH_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        None, validation_alias=AliasChoices("MEDBATCH_OPENAI_BASE_URL", "OPENAI_BASE_URL")
    )
    llm_model: str = d.LLM_MODEL
    llm_temperature: float = Field(d.LLM_TEMPERATURE, ge=0, le=2)
    llm_max_tokens: int = Field(d.LLM_MAX_TOKENS, ge=16, le=32_000)
    llm_timeout_s: float = Field(d.LLM_TIMEOUT_S, gt=0)
    llm_max_attempts: int = Field(
        d.LLM_MAX_ATTEMPTS, ge=1, le=20, description="tries per report before it is an item error"
    )
    llm_requests_per_minute: int = Field(
        d.LLM_REQUESTS_PER_MINUTE, ge=1, description="global, shared by every worker through Redis"
    )
    llm_tokens_per_minute: int = Field(d.LLM_TOKENS_PER_MINUTE, ge=100, description="global, shared by every worker")
    llm_prices_json: str = Field("", description='{"model": [usd_per_mtok_in, usd_per_mtok_out]} overrides')
    report_batch_size: int = Field(
        d.REPORT_BATCH_SIZE_ITEMS, ge=1, le=1000, description="reports per message (small: calls are slow)"
    )
    report_poll_interval_s: float = Field(
        d.REPORT_POLL_INTERVAL_S, gt=0, description="Batch API polling interval (overnight mode)"
    )

    molecule_batch_size: int = Field(
        d.MOLECULE_BATCH_SIZE, ge=1, le=10_000, description="molecules sampled per message"
    )

    # Imaging (X-ray) workload.
    imaging_batch_size: int = Field(d.IMAGING_BATCH_SIZE_IMAGES, ge=1, le=10_000, description="images per message")
    imaging_predict_batch: int = Field(
        d.IMAGING_PREDICT_BATCH_IMAGES, ge=1, le=1024, description="images per compiled model call"
    )
    imaging_decode_threads: int = Field(
        d.IMAGING_DECODE_THREADS, ge=1, le=64, description="threads decoding images in a worker"
    )
    imaging_max_pixels: int = Field(d.IMAGING_MAX_PIXELS, ge=1, description="largest image decoded, pixels per frame")
    imaging_max_file_mb: int = Field(d.IMAGING_MAX_FILE_MB, ge=1, description="largest image file read, MiB")
    imaging_modalities: str = Field(
        ",".join(d.IMAGING_MODALITIES), description="DICOM modalities accepted as radiographs"
    )
    # PACS (DICOMweb, DICOM listener, findings back as SR/SC). Credentials only here: never in a URL or message.
    pacs_username: str = Field("", description="basic-auth user for the PACS's DICOMweb")
    pacs_password: SecretStr | None = Field(None, description="basic-auth password for the PACS's DICOMweb")
    pacs_token: SecretStr | None = Field(None, description="bearer token for the PACS's DICOMweb (wins over basic)")
    pacs_timeout_s: float = Field(d.PACS_TIMEOUT_S, gt=0, description="one DICOMweb request, seconds")
    pacs_return: bool = Field(False, description="send SR/SC findings back after a PACS-sourced job finishes")
    pacs_return_to: str = Field(
        "", description="where findings go back: a DICOMweb URL or AET@host:port; empty = the job's own PACS"
    )
    dicom_aet: str = Field(d.DICOM_AET, min_length=1, max_length=16, description="medbatch's own AE title")
    dicom_port: int = Field(d.DICOM_PORT, ge=1, le=65535, description="port of `medbatch dicom listen`")
    dicom_allowed_aets: str = Field("", description="calling AE titles the listener accepts, comma-separated")
    dicom_study_settle_s: float = Field(
        d.DICOM_STUDY_SETTLE_S, ge=0, description="a received study quiet this long is staged as a job"
    )
    dicom_inbox: Path | None = Field(
        None, description="where the listener writes instances; default: <first input root>/dicom-received"
    )
    fhir_patient_system: str = Field(
        d.FHIR_PATIENT_SYSTEM, min_length=1, description="identifier system of the patient ids in FHIR references"
    )
    fhir_token: SecretStr | None = Field(None, description="bearer token for `export fhir --to` (never on the CLI)")
    fhir_timeout_s: float = Field(d.FHIR_TIMEOUT_S, gt=0, description="one transaction POST to the FHIR server")
    # Guard against slow memory growth in long-lived pool children (TensorFlow, image decoders).
    worker_max_memory_per_child_mb: int = Field(
        d.WORKER_MAX_MEMORY_PER_CHILD_MB,
        ge=0,
        description="replace a pool child after a task leaves it above this RSS; 0 = never",
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
    timezone: str = Field(d.TIMEZONE, description="IANA time zone for beat schedules and for when a night starts")
    nightly_inbox: Path | None = Field(None, description="folder the nightly run takes new inputs from")
    nightly_hour: int = Field(
        d.NIGHTLY_HOUR, ge=0, le=23, description="hour (in `timezone`) beat starts the nightly run"
    )
    nightly_minute: int = Field(d.NIGHTLY_MINUTE, ge=0, le=59)
    nightly_settle_s: int = Field(
        d.NIGHTLY_SETTLE_S, ge=0, description="files modified more recently are left for the next run"
    )
    nightly_timeout_s: int = Field(d.NIGHTLY_TIMEOUT_S, ge=60, description="how long `nightly` waits for its jobs")
    summary_hour: int = Field(
        d.SUMMARY_HOUR, ge=0, le=23, description="hour (in `timezone`) beat writes last night's summary"
    )

    def pacs_access(self):
        """How to reach the PACS over DICOMweb (:class:`medbatch.interop.dicomweb.PacsAccess`), secrets unwrapped."""
        from medbatch.interop.dicomweb import PacsAccess

        return PacsAccess(
            username=self.pacs_username,
            password=self.pacs_password.get_secret_value() if self.pacs_password else "",
            token=self.pacs_token.get_secret_value() if self.pacs_token else "",
            timeout_s=self.pacs_timeout_s,
        )

    def allowed_aet_list(self) -> tuple[str, ...]:
        """:attr:`dicom_allowed_aets` as AE titles (stripped)."""
        return tuple(a.strip() for a in self.dicom_allowed_aets.split(",") if a.strip())

    def dicom_inbox_dir(self) -> Path:
        """Where the listener writes received instances: ``dicom_inbox``, else under the first input root,
        else under the results directory."""
        if self.dicom_inbox is not None:
            return self.dicom_inbox
        roots = self.allowed_input_roots()
        return (roots[0] if roots else self.results_dir) / "dicom-received"

    def beat_schedule_path(self) -> Path:
        """Beat's state file: ``beat_schedule_file``, else in this deployment's results directory (so two
        deployments on one host never share one, as they did with a fixed file under /tmp)."""
        return self.beat_schedule_file or self.results_dir / "celerybeat-schedule"

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

    @field_validator("nightly_inbox", "dicom_inbox", "beat_schedule_file", mode="before")
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

    @field_validator("broker_url")
    @classmethod
    def _broker_password_encoded(cls, value: str) -> str:
        # kombu splits a broker URL with urllib: an unencoded '#', '?', '/' or '@' in the password cuts the
        # URL short and kombu's own error then quotes part of the password. Refuse it here, naming the
        # character and its encoding, never the password.
        password = url_password(value) or ""
        for char in "#?/@":
            if char in password:
                raise ValueError(
                    f"the broker password holds {char!r}, which a broker URL cannot carry as it is: "
                    f"percent-encode it as {quote(char, safe='')} (the password itself is not shown)"
                )
        return value

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> Settings:
        if self.environment == "production":
            for url in (self.broker_url, self.database_url):
                password = url_password(url)
                if password and password.lower() in PLACEHOLDER_SECRETS:
                    raise ValueError(f"placeholder password in {redact_url(url)}: set a real secret for production")
            if self.flower_basic_auth:
                password = self.flower_basic_auth.partition(":")[2]
                if password.lower() in PLACEHOLDER_SECRETS:
                    raise ValueError("placeholder Flower password: set MEDBATCH_FLOWER_BASIC_AUTH for production")
        return self


#: Where a URL starts in text: ``scheme://`` (RFC 3986 scheme characters).
_URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")


def _redact_authority(rest: str) -> str:
    """``rest`` (what follows ``scheme://``) with the password of its userinfo replaced by ``***``.

    The userinfo runs to the *last* ``@``: a password may hold ``#``, ``?``, ``/``, ``@`` and ``:``
    unencoded (libraries disagree on where it ends; redacting up to the last ``@`` covers all of them,
    at worst hiding a host along with the password). The user is what precedes the first ``:``.
    """
    at = rest.rfind("@")
    if at < 0:
        return rest
    user, colon, _password = rest[:at].partition(":")
    return f"{user}:***{rest[at:]}" if colon else rest


def redact_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, safe for logs and terminals.

    The one redaction of every URL-shaped secret (:func:`redact_text` applies it to each URL in a text).
    """
    start = _URL_START.match(url)
    return url if start is None else url[: start.end()] + _redact_authority(url[start.end() :])


def redact_text(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***`` (for error messages from libraries).

    In free text a URL ends at whitespace or where the next ``scheme://`` begins.
    """
    out, pos = [], 0
    for start in _URL_START.finditer(text):
        if start.start() < pos:
            continue
        end = len(text)
        space = re.search(r"\s", text[start.end() :])
        if space:
            end = start.end() + space.start()
        following = _URL_START.search(text, start.end(), end)
        if following:
            end = following.start()
        out.append(text[pos : start.end()] + _redact_authority(text[start.end() : end]))
        pos = end
    return "".join(out) + text[pos:]


def url_password(url: str) -> str | None:
    """The password of ``url`` as :func:`redact_url` sees it (None when it has none)."""
    start = _URL_START.match(url)
    if start is None:
        return None
    rest = url[start.end() :]
    at = rest.rfind("@")
    _user, colon, password = rest[: max(at, 0)].partition(":")
    return password if at >= 0 and colon else None


def error_reason(exc: BaseException) -> str:
    """``Type: first line of the message``, passwords in URLs redacted: a short, safe cause for a person."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    return redact_text(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
