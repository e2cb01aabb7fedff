"""Medical report drafts from a language model, behind one provider interface.

Two providers share one contract, ``generate(facts) -> ReportDraft``:

* ``offline``: a deterministic template filled from the facts. It needs no key and no network; every
  report it writes starts with :data:`OFFLINE_LABEL` so nobody mistakes it for a model's text.
* ``openai``: the official ``openai`` SDK (imported inside the provider, so importing this module
  stays cheap). It works against OpenAI and any OpenAI-compatible server (vLLM, Ollama) through
  ``base_url``; ``api_key``/``base_url`` left as ``None`` fall back to the SDK's own
  ``OPENAI_API_KEY``/``OPENAI_BASE_URL`` handling. The SDK's retries are switched off: the pipeline
  (``medbatch.pipeline.reports.call_with_retries``) retries :class:`ProviderUnavailable` and ``RateLimited``
  per report with its own backoff (honouring ``Retry-After``) and cap (``llm_max_attempts``); a report
  still failing after the last try becomes an item error, not a task retry.

A report has three sections, in this order: Condition, Recommended treatment, Follow-up.

Minimum necessary (HIPAA): :func:`minimum_necessary` is the only way a record becomes
:class:`PatientFacts`, and only facts reach a prompt. It keeps an allow-list of clinical fields,
turns a date of birth into an age in whole years (ages over 89 become 90, as Safe Harbor requires),
scrubs allow-listed free text of contact details, record numbers, URLs and dates, and drops
everything else. Error messages never include prompt or record contents.

This module is plain Python: it imports no Celery, Redis or SQLAlchemy.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from medbatch import defaults
from medbatch.errors import (  # noqa: F401 - the provider errors are re-exported for callers of this module
    BatchNotFinished,
    InvalidInput,
    InvalidModelOutput,
    ModelMisconfigured,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
)

PROMPT_VERSION = "report-v1"
"""Version of the prompt template (and of the offline template); bump it whenever either changes."""

OFFLINE_LABEL = "OFFLINE TEMPLATE DRAFT - not written by a language model - requires clinician review"
"""First line of every offline report."""

OFFLINE_MODEL = "offline-template"

BATCH_ENDPOINT = "/v1/chat/completions"
BATCH_COMPLETION_WINDOW = "24h"
BATCH_DISCOUNT = 0.5
"""Batch API requests are billed at half the synchronous price."""

OPENAI_HOST = "api.openai.com"

ALLOWED_FIELDS: tuple[str, ...] = (
    "age",
    "sex",
    "bmi",
    "exercise_frequency",
    "smoking_history",
    "blood_pressure",
    "cholesterol",
    "diabetes",
    "conditions",
    "medications",
    "allergies",
    "symptoms",
    "findings",
)
"""Top-level record fields that may reach a prompt (names compared case- and space-insensitively)."""

ALLOWED_FINDINGS: tuple[str, ...] = (
    "risk_label",
    "risk_score",
    "treatment_plan",
    "treatment_probability",
    "xray_label",
    "xray_probability",
    "molecule_label",
    "molecule_score",
)
"""Keys of ``findings`` (other medbatch models' outputs) that may reach a prompt."""

BIRTH_DATE_FIELDS = ("date_of_birth", "dob", "birth_date", "birthdate")
IDENTIFIER_FIELDS = (
    "name", "first_name", "last_name", "full_name", "patient_name", "given_name", "family_name",
    "mrn", "medical_record_number", "record_number", "patient_id", "ssn", "social_security_number",
    "address", "street", "city", "email", "phone", "telephone", "mobile", "fax",
)  # fmt: skip
"""Fields whose values (and the words in them) are also removed from allow-listed free text."""

SAFE_HARBOR_MAX_AGE = 90
"""Ages over 89 are reported as 90 (HIPAA Safe Harbor groups them into one category)."""
FREE_TEXT_MAX_CHARS = 500
"""Each free-text value is cut to this length: enough for a problem list, bounded for the prompt."""
REDACTED = "[redacted]"

_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_SCRUB_PATTERNS = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",  # email
        r"\b(?:https?://|www\.)\S+",  # URL
        r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b",  # 2024-03-01
        r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b",  # 03/01/2024
        rf"\b{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b",  # March 1, 2024
        rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}\s+\d{{4}}\b",  # 1 March 2024
        rf"\b{_MONTH}\s+\d{{4}}\b",  # March 2024
        r"\b\d{3}-\d{2}-\d{4}\b",  # SSN
        r"(?:\+?\d{1,3}[\s.-]?)?\(?\b\d{3}\)?[\s.-]?\d{3}[\s.-]?\d{4}\b",  # phone
        r"\b\d{1,3}(?:\.\d{1,3}){3}\b",  # IP address
        r"\b(?:mrn|mr#|record\s*(?:no\.?|number|#))\s*[:#]?\s*[\w-]+",  # labelled record numbers
        r"\b[a-z]{0,4}[-#]?\d{5,}\b",  # MRN/ZIP/account-like digit runs
    )
]
_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry,|i can'?t|i cannot|i can not|i'?m unable|i am unable|i won'?t|"
    r"i'?m not able|i am not able|as an ai)",
    re.IGNORECASE,
)
_SECTION_KEYS = ("condition", "recommended_treatment", "follow_up")
_SECTION_TITLES = {"condition": "Condition", "recommended_treatment": "Recommended treatment", "follow_up": "Follow-up"}
_HEADING = re.compile(
    r"^[ \t>]*(?P<hash>#{1,6}[ \t]*)?(?:\d+[.)][ \t]*)?(?P<bold>\*\*|__)?[ \t]*"
    r"(?P<title>conditions?|diagnosis|recommended[ \t]+treatments?|treatment[ \t]+recommendations?|treatment|"
    r"follow[ \t-]?up)"
    r"[ \t]*(?:\*\*|__)?[ \t]*(?P<colon>:)?[ \t]*(?:\*\*|__)?[ \t]*(?P<rest>.*)$",
    re.IGNORECASE | re.MULTILINE,
)

PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
}
"""Default (input, output) list prices in USD per million tokens. Pass your own table (contract prices,
self-hosted models at 0.0) to override; a model in no table gets ``cost_usd=None``, never a guess."""


@dataclass(frozen=True)
class PatientFacts:
    """The de-identified, allow-listed facts about one patient: the only input a prompt sees.

    Attributes:
        age: whole years, capped at 90; ``None`` when unknown.
        sex: as recorded (lower case), or ``None``.
        clinical: allow-listed clinical fields (numbers as given, free text scrubbed).
        findings: allow-listed outputs of other medbatch models (risk, treatment plan, X-ray).
    """

    age: int | None
    sex: str | None
    clinical: dict[str, Any] = field(default_factory=dict)
    findings: dict[str, Any] = field(default_factory=dict)

    def as_prompt_dict(self) -> dict[str, Any]:
        """The facts as one JSON-ready dict, keys sorted, empty values left out."""
        out: dict[str, Any] = {"age_years": self.age, "sex": self.sex, **self.clinical}
        if self.findings:
            out["findings"] = dict(self.findings)
        return {k: out[k] for k in sorted(out) if out[k] not in (None, "", [], {})}


@dataclass(frozen=True)
class ReportDraft:
    """One generated report and its accounting.

    Attributes:
        text: the full report text as written (offline: starting with :data:`OFFLINE_LABEL`).
        sections: ``condition``, ``recommended_treatment``, ``follow_up``.
        provider: ``"offline"`` or ``"openai"``.
        model: the model that answered (as reported by the server) or :data:`OFFLINE_MODEL`.
        prompt_version: :data:`PROMPT_VERSION` at generation time.
        tokens_in: prompt tokens billed; tokens_out: completion tokens billed.
        cost_usd: estimate from the price table (USD), ``None`` for a model missing from it.
        latency_s: seconds from request to answer (0.0 for Batch API lines, which are not timed singly).
        finish_reason: the model's finish reason (``"stop"``), or ``"template"`` offline.
        requires_review: always ``True``: every draft is for a clinician to review.
    """

    text: str
    sections: dict[str, str]
    provider: str
    model: str
    prompt_version: str
    tokens_in: int
    tokens_out: int
    cost_usd: float | None
    latency_s: float
    finish_reason: str
    requires_review: bool = True


# --------------------------------------------------------------------------- minimum necessary


def _norm_key(key: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().lower())


def _age_from_birth(value: Any, today: date) -> int | None:
    if isinstance(value, datetime):
        born = value.date()
    elif isinstance(value, date):
        born = value
    else:
        try:
            born = date.fromisoformat(str(value).strip()[:10])
        except ValueError:
            return None
    years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    return years if years >= 0 else None


def _as_age(value: Any) -> int | None:
    try:
        age = int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None
    return age if age >= 0 else None


# Names the record does not list (a clinician, a relative written into free text): a title and a name,
# or two or more capitalised words in a row. Clinical terms in such runs are redacted too: over-redacting
# a draft's input is the safe direction.
_NAME_LIKE = [
    re.compile(r"\b(?i:dr|mr|mrs|ms|miss|prof|nurse|sister)\.?\s+[A-Z][\w'-]+(?:\s+[A-Z][\w'-]+)*"),
    re.compile(r"\b[A-Z][a-z'-]+(?:\s+(?:[A-Z]\.\s*)?[A-Z][a-z'-]+)+\b"),
]


def _scrub(text: str, known: list[str]) -> str:
    for pattern in _SCRUB_PATTERNS:  # patterns first, so an email is removed whole, not just its name part
        text = pattern.sub(REDACTED, text)
    for pattern in _NAME_LIKE:
        text = pattern.sub(REDACTED, text)
    for value in known:
        text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", REDACTED, text, flags=re.IGNORECASE)
    return text[:FREE_TEXT_MAX_CHARS].strip()


def _clean_value(value: Any, known: list[str]) -> Any:
    """Numbers and booleans as given; text scrubbed; lists element-wise; anything else as scrubbed text."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [v for v in (_clean_value(v, known) for v in value) if v not in (None, "")]
    return _scrub(str(value), known)


def _known_identifiers(record: Mapping[str, Any]) -> list[str]:
    """Values of identifier fields, whole and word by word (longest first), to strip from free text."""
    found: set[str] = set()
    for key, value in record.items():
        if _norm_key(key) in IDENTIFIER_FIELDS and isinstance(value, str | int) and str(value).strip():
            text = str(value).strip()
            found.add(text)
            found.update(re.findall(r"[^\W\d_]{3,}", text))  # words of 3+ letters: "Smith" in "John Smith"
    return sorted(found, key=len, reverse=True)


def minimum_necessary(record: Mapping[str, Any], *, today: date | None = None) -> PatientFacts:
    """Reduce a patient record to the facts a report prompt may see.

    Args:
        record: any mapping of field name to value; names are compared case-insensitively with spaces
            and hyphens read as underscores. Fields off :data:`ALLOWED_FIELDS` are dropped.
        today: the date ages are computed against (defaults to today, UTC).

    Returns:
        The facts: an age in whole years (from ``age`` or a date of birth; over 89 becomes 90), sex,
        allow-listed clinical fields with free text scrubbed of emails, phone numbers, URLs, SSN/MRN-like
        numbers, dates and the record's own identifier values, and allow-listed ``findings``.
        Never raises on unexpected fields or values.
    """
    today = today or datetime.now(UTC).date()
    fields = {_norm_key(k): v for k, v in record.items()}
    known = _known_identifiers(record)
    age = _as_age(fields.get("age"))
    if age is None:
        for key in BIRTH_DATE_FIELDS:
            if fields.get(key) not in (None, ""):
                age = _age_from_birth(fields[key], today)
                break
    if age is not None:
        age = min(age, SAFE_HARBOR_MAX_AGE)
    sex = None
    if fields.get("sex") not in (None, ""):
        sex = _scrub(str(fields["sex"]), known).lower()[:20] or None
    clinical = {}
    for key in ALLOWED_FIELDS:
        if key in ("age", "sex", "findings") or key not in fields:
            continue
        value = _clean_value(fields[key], known)
        if value not in (None, "", []):
            clinical[key] = value
    findings = {}
    raw_findings = fields.get("findings")
    if isinstance(raw_findings, Mapping):
        normalised = {_norm_key(k): v for k, v in raw_findings.items()}
        for key in ALLOWED_FINDINGS:
            value = _clean_value(normalised.get(key), known)
            if value not in (None, "", []):
                findings[key] = value
    return PatientFacts(age=age, sex=sex, clinical=clinical, findings=findings)


# --------------------------------------------------------------------------- prompt and parsing

SYSTEM_PROMPT = (
    "You are a clinical documentation assistant. You write a DRAFT report for a clinician to review; "
    "it is not a diagnosis and not medical advice to the patient. Use only the de-identified facts given. "
    "Do not invent names, dates, identifiers, test results or history. Be concise and specific.\n"
    "Answer with exactly three sections, in this order, each starting with its markdown heading on its own line:\n"
    "## Condition\n## Recommended treatment\n## Follow-up\n"
    "Write nothing before the first heading or after the last section."
)


def build_messages(facts: PatientFacts) -> list[dict[str, str]]:
    """The chat messages for one report (prompt version :data:`PROMPT_VERSION`).

    The system message asks for exactly three headed sections (Condition, Recommended treatment,
    Follow-up) and says the text is a draft for clinician review; the user message carries the facts
    as sorted JSON and nothing else.
    """
    facts_json = json.dumps(facts.as_prompt_dict(), sort_keys=True, ensure_ascii=False)
    user = f"De-identified patient facts (JSON):\n{facts_json}\n\nWrite the draft report."
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _section_key(title: str) -> str:
    title = title.lower()
    if title.startswith("follow"):
        return "follow_up"
    if "treatment" in title:
        return "recommended_treatment"
    return "condition"


def _split(text: str, headings: list[re.Match[str]]) -> dict[str, str]:
    sections: dict[str, str] = {}
    for i, match in enumerate(headings):
        key = _section_key(match["title"])
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        body = (match["rest"] + "\n" + text[match.end() : end]).strip()
        if key not in sections and body:
            sections[key] = body
    return sections


def parse_sections(text: str) -> dict[str, str]:
    """Split a report into its three sections.

    Accepts markdown headings (``## Condition``), bold (``**Condition:**``), plain ``Condition:``
    and numbered headings, in any case. The first heading of each kind wins.

    Returns:
        ``{"condition": ..., "recommended_treatment": ..., "follow_up": ...}``, each stripped.

    Raises:
        InvalidModelOutput: (reason ``missing_sections``) when a section is absent or empty.
    """
    text = text or ""
    # A heading is marked (#, bold), ends in a colon, or stands alone on its line; a sentence that merely
    # starts with "Treatment ..." is not one. Marked headings win when they give all three sections.
    found = [m for m in _HEADING.finditer(text) if m["hash"] or m["bold"] or m["colon"] or not m["rest"].strip()]
    marked = [m for m in found if m["hash"] or m["bold"]]
    sections = _split(text, marked)
    if len(sections) < len(_SECTION_KEYS):
        sections = _split(text, found)
    missing = [_SECTION_TITLES[k] for k in _SECTION_KEYS if k not in sections]
    if missing:
        raise InvalidModelOutput(f"report is missing section(s): {', '.join(missing)}", reason="missing_sections")
    return {k: sections[k] for k in _SECTION_KEYS}


def estimate_cost(
    model: str, tokens_in: int, tokens_out: int, prices: Mapping[str, tuple[float, float]] | None = None
) -> float | None:
    """Estimated cost in USD of one call, from a per-million-token price table.

    A model matches its own entry, else the longest entry it extends with ``-`` (dated snapshots such
    as ``gpt-4o-mini-2024-07-18`` use ``gpt-4o-mini``). Returns ``None`` for a model in no entry.
    """
    table = PRICES_PER_MTOK if prices is None else prices
    entry = table.get(model)
    if entry is None:
        candidates = [k for k in table if model.startswith(k + "-")]
        if not candidates:
            return None
        entry = table[max(candidates, key=len)]
    price_in, price_out = entry
    return round((tokens_in * price_in + tokens_out * price_out) / 1_000_000, 8)


# --------------------------------------------------------------------------- offline provider


def _fmt(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "none recorded"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    match = re.match(r"\s*(\d+(?:\.\d+)?)", str(value))
    return float(match.group(1)) if match else None


class OfflineProvider:
    """Deterministic template reports: no key, no network, clearly labelled as not model-written."""

    name = "offline"
    model = OFFLINE_MODEL

    def generate(self, facts: PatientFacts) -> ReportDraft:
        """Fill the three-section template from ``facts``; the same facts always give the same text."""
        started = time.perf_counter()
        c, f = facts.clinical, facts.findings
        who = ", ".join(p for p in (f"{facts.age} years" if facts.age is not None else "", facts.sex or "") if p)
        condition = [f"Patient: {who or 'age and sex not recorded'}."]
        for key, label in (("conditions", "Known conditions"), ("symptoms", "Reported symptoms")):
            if key in c:
                condition.append(f"{label}: {_fmt(c[key])}.")
        if "risk_label" in f:
            score = f" (score {_fmt(f['risk_score'])})" if "risk_score" in f else ""
            condition.append(f"Risk model: {_fmt(f['risk_label'])} risk{score}.")
        if "xray_label" in f:
            prob = f" (probability {_fmt(f['xray_probability'])})" if "xray_probability" in f else ""
            condition.append(f"Chest X-ray model: {_fmt(f['xray_label'])}{prob}.")
        for key, label in (("blood_pressure", "Blood pressure"), ("cholesterol", "Cholesterol"), ("bmi", "BMI")):
            if key in c:
                condition.append(f"{label}: {_fmt(c[key])}.")

        treatment = []
        if "treatment_plan" in f:
            treatment.append(f"Treatment model suggests: {_fmt(f['treatment_plan'])}.")
        if "medications" in c:
            treatment.append(f"Review current medications: {_fmt(c['medications'])}.")
        if (_number(c.get("smoking_history")) or 0) > 0:
            treatment.append("Offer smoking cessation support.")
        if (_number(c.get("blood_pressure")) or 0) >= 140:
            treatment.append("Assess blood pressure control.")
        if (_number(c.get("cholesterol")) or 0) >= 240:
            treatment.append("Assess lipid management.")
        if (_number(c.get("diabetes")) or 0) > 0:
            treatment.append("Review glycaemic control.")
        if "allergies" in c:
            treatment.append(f"Check allergies before prescribing: {_fmt(c['allergies'])}.")
        if not treatment:
            treatment.append("No specific treatment indicated by the recorded facts; clinician to decide.")

        xray = str(f.get("xray_label", "normal")).lower()
        high = str(f.get("risk_label", "")).lower() == "high" or xray not in ("normal", "")
        follow_up = "Review within 4 weeks." if high else "Routine review within 12 months."

        sections = {
            "condition": " ".join(condition),
            "recommended_treatment": " ".join(treatment),
            "follow_up": follow_up + " A clinician must review this draft before any use.",
        }
        body = "\n\n".join(f"## {_SECTION_TITLES[k]}\n{sections[k]}" for k in _SECTION_KEYS)
        return ReportDraft(
            text=f"{OFFLINE_LABEL}\n\n{body}\n",
            sections=sections,
            provider=self.name,
            model=OFFLINE_MODEL,
            prompt_version=PROMPT_VERSION,
            tokens_in=0,
            tokens_out=0,
            cost_usd=0.0,
            latency_s=time.perf_counter() - started,
            finish_reason="template",
        )


# --------------------------------------------------------------------------- OpenAI provider


def _retry_after_s(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), else None."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _error_code(body: Any) -> str:
    """The ``code``/``type`` of an API error body, never its free-text message (it may echo input)."""
    error = body.get("error", body) if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return ""
    parts = [str(error[k]) for k in ("code", "type") if error.get(k)]
    return f" ({', '.join(parts)})" if parts else ""


def _get(obj: Any, *path: Any) -> Any:
    for key in path:
        if isinstance(obj, Mapping):
            obj = obj.get(key)
        elif isinstance(obj, list) and isinstance(key, int) and -len(obj) <= key < len(obj):
            obj = obj[key]
        else:
            return None
    return obj


class OpenAIProvider:
    """Reports from the Chat Completions API of OpenAI or any OpenAI-compatible server.

    Args:
        api_key: the key; ``None`` lets the SDK read ``OPENAI_API_KEY``.
        base_url: e.g. ``http://localhost:8000/v1`` for vLLM; ``None`` lets the SDK read
            ``OPENAI_BASE_URL`` and otherwise use OpenAI.
        model: model name as the server knows it.
        temperature: sampling temperature.
        max_tokens: output token cap per report. Sent as ``max_completion_tokens`` to OpenAI (which
            rejects ``max_tokens`` for newer models) and as ``max_tokens`` to other servers.
        timeout_s: seconds per HTTP request before :class:`ProviderUnavailable`.
        prices: price table for :func:`estimate_cost`; ``None`` uses :data:`PRICES_PER_MTOK`.

    Raises:
        ModelMisconfigured: the ``openai`` package is missing or no API key is available.
    """

    name = "openai"

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        model: str,
        temperature: float = defaults.LLM_TEMPERATURE,
        max_tokens: int = defaults.LLM_MAX_TOKENS,
        timeout_s: float = defaults.LLM_TIMEOUT_S,
        prices: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        try:
            import openai
        except ImportError as exc:  # pragma: no cover - openai is a dependency
            raise ModelMisconfigured("the openai provider needs the 'openai' package") from exc
        if not model:
            raise ModelMisconfigured("the openai provider needs a model name")
        self._openai = openai
        try:
            self._client = openai.OpenAI(
                api_key=api_key or None, base_url=base_url or None, timeout=timeout_s, max_retries=0
            )
        except openai.OpenAIError as exc:
            raise ModelMisconfigured(f"cannot configure the OpenAI client: {exc}") from None
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.prices = prices
        self.base_url = str(self._client.base_url)
        is_openai = self._client.base_url.host == OPENAI_HOST
        self._max_tokens_param = "max_completion_tokens" if is_openai else "max_tokens"

    # ------------------------------------------------------------------ one report
    def _request_body(self, facts: PatientFacts) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": build_messages(facts),
            "temperature": self.temperature,
            self._max_tokens_param: self.max_tokens,
        }

    def generate(self, facts: PatientFacts) -> ReportDraft:
        """Write one report with a chat completion.

        Raises:
            RateLimited: HTTP 429; ``retry_after_s`` from the ``Retry-After`` header when sent.
            ProviderUnavailable: HTTP 5xx/408/409, a timeout or a connection failure.
            ProviderRejected: any other HTTP 4xx (bad key, unknown model, bad request).
            InvalidModelOutput: a refusal, an empty or truncated answer, missing sections, a malformed body.
        """
        body = self._request_body(facts)
        started = time.perf_counter()
        try:
            completion = self._client.chat.completions.create(**body)
        except Exception as exc:  # mapped onto medbatch's error tree; unknown errors re-raised as they are
            raise self._map_error(exc) from None
        latency_s = time.perf_counter() - started
        if not hasattr(completion, "model_dump"):  # a non-JSON 200 comes back from the SDK as text
            raise InvalidModelOutput("provider returned a body that is not a chat completion", reason="malformed")
        return self._draft(completion.model_dump(), latency_s=latency_s, discount=1.0)

    def _map_error(self, exc: Exception) -> Exception:
        openai = self._openai
        if isinstance(exc, openai.RateLimitError):
            return RateLimited(
                f"provider rate limit (HTTP 429){_error_code(exc.body)}", _retry_after_s(exc.response.headers)
            )
        if isinstance(exc, openai.APITimeoutError):
            return ProviderUnavailable(f"provider timed out after {self.timeout_s:g} s")
        if isinstance(exc, openai.APIConnectionError):
            return ProviderUnavailable(f"cannot connect to the provider at {self.base_url}")
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            if status >= 500 or status in (408, 409):
                return ProviderUnavailable(f"provider error HTTP {status}{_error_code(exc.body)}")
            return ProviderRejected(f"provider rejected the request: HTTP {status}{_error_code(exc.body)}", status)
        if isinstance(exc, openai.APIResponseValidationError | json.JSONDecodeError):
            return InvalidModelOutput("provider returned a malformed response body", reason="malformed")
        return exc

    def _draft(self, body: Any, *, latency_s: float, discount: float) -> ReportDraft:
        """A draft from one chat-completion body (a dict), or :class:`InvalidModelOutput`."""
        if not isinstance(body, Mapping) or not isinstance(_get(body, "choices", 0), Mapping):
            raise InvalidModelOutput("provider returned a body that is not a chat completion", reason="malformed")
        message = _get(body, "choices", 0, "message") or {}
        finish_reason = str(_get(body, "choices", 0, "finish_reason") or "unknown")
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(message, Mapping) and message.get("refusal"):
            raise InvalidModelOutput("the model refused to write the report", reason="refusal")
        if finish_reason == "content_filter":
            raise InvalidModelOutput("the provider's content filter stopped the report", reason="content_filter")
        if not isinstance(content, str) or not content.strip():
            raise InvalidModelOutput("the model returned an empty report", reason="empty")
        if finish_reason == "length":
            raise InvalidModelOutput(
                f"the report was cut off at the token limit ({self.max_tokens} tokens)", reason="truncated"
            )
        try:
            sections = parse_sections(content)
        except InvalidModelOutput:
            if _REFUSAL.match(content):
                raise InvalidModelOutput("the model refused to write the report", reason="refusal") from None
            raise
        tokens_in = int(_get(body, "usage", "prompt_tokens") or 0)
        tokens_out = int(_get(body, "usage", "completion_tokens") or 0)
        model = str(body.get("model") or self.model)
        cost = estimate_cost(model, tokens_in, tokens_out, self.prices)
        if cost is None and model != self.model:  # servers may answer with a snapshot name the table lacks
            cost = estimate_cost(self.model, tokens_in, tokens_out, self.prices)
        return ReportDraft(
            text=content.strip(),
            sections=sections,
            provider=self.name,
            model=model,
            prompt_version=PROMPT_VERSION,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cost_usd=None if cost is None else round(cost * discount, 8),
            latency_s=latency_s,
            finish_reason=finish_reason,
        )

    # ------------------------------------------------------------------ Batch API (overnight mode)
    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise self._map_error(exc) from None

    def batch_request_line(self, custom_id: str, facts: PatientFacts) -> dict[str, Any]:
        """One line of a Batch API input file: the same request :meth:`generate` sends, tagged ``custom_id``."""
        return {"custom_id": str(custom_id), "method": "POST", "url": BATCH_ENDPOINT, "body": self._request_body(facts)}

    def submit_batch(self, lines: list[dict[str, Any]]) -> str:
        """Upload ``lines`` as JSONL (purpose ``batch``) and start a 24 h batch; returns the batch ID.

        Raises:
            InvalidInput: no lines, or ``custom_id`` values that are not unique.
            RateLimited, ProviderUnavailable, ProviderRejected: as for :meth:`generate`.
        """
        ids = [line.get("custom_id") for line in lines]
        if not lines:
            raise InvalidInput("a batch needs at least one request")
        if len(set(ids)) != len(ids) or None in ids:
            raise InvalidInput("every batch line needs a unique custom_id")
        data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        uploaded = self._call(
            self._client.files.create, file=("medbatch-reports.jsonl", data, "application/jsonl"), purpose="batch"
        )
        batch = self._call(
            self._client.batches.create,
            input_file_id=uploaded.id,
            endpoint=BATCH_ENDPOINT,
            completion_window=BATCH_COMPLETION_WINDOW,
        )
        return batch.id

    def batch_status(self, batch_id: str) -> dict[str, Any]:
        """``{"status", "request_counts": {"total", "completed", "failed"}, "output_file_id", "error_file_id"}``.

        ``status`` is the API's: validating, in_progress, finalizing, completed, failed, expired,
        cancelling, cancelled.
        """
        batch = self._call(self._client.batches.retrieve, batch_id)
        counts = batch.request_counts.model_dump() if batch.request_counts is not None else {}
        return {
            "status": batch.status,
            "request_counts": counts,
            "output_file_id": batch.output_file_id,
            "error_file_id": batch.error_file_id,
        }

    def batch_results(self, batch_id: str) -> dict[str, ReportDraft | InvalidModelOutput]:
        """Results of a finished batch by ``custom_id``: a draft, or the reason the line failed.

        Costs carry :data:`BATCH_DISCOUNT`. Lines of an expired or cancelled batch that never ran are
        absent from the result: the caller submits them again.

        Raises:
            BatchNotFinished: the batch is still validating, running or finalizing.
            ProviderRejected: the batch itself failed (for example, its input file was invalid).
        """
        batch = self._call(self._client.batches.retrieve, batch_id)
        if batch.status in ("validating", "in_progress", "finalizing", "cancelling"):
            raise BatchNotFinished(f"batch {batch_id} is {batch.status}")
        if batch.status == "failed":
            codes = sorted({e.code for e in (batch.errors.data or [])} - {None}) if batch.errors else []
            raise ProviderRejected(f"batch {batch_id} failed{' (' + ', '.join(codes) + ')' if codes else ''}")
        results: dict[str, ReportDraft | InvalidModelOutput] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            text = self._call(self._client.files.content, file_id).text
            for raw in text.splitlines():
                if raw.strip():
                    custom_id, result = self._batch_line(raw)
                    if custom_id is not None:
                        results.setdefault(custom_id, result)
        return results

    def _batch_line(self, raw: str) -> tuple[str | None, ReportDraft | InvalidModelOutput]:
        try:
            line = json.loads(raw)
        except ValueError:
            return None, InvalidModelOutput("unreadable batch output line", reason="malformed")
        custom_id = line.get("custom_id") if isinstance(line, Mapping) else None
        if custom_id is None:
            return None, InvalidModelOutput("batch output line without custom_id", reason="malformed")
        error, response = line.get("error"), line.get("response")
        if error:
            code = error.get("code") if isinstance(error, Mapping) else None
            return custom_id, InvalidModelOutput(f"batch request failed ({code or 'error'})", reason="batch_error")
        status = _get(response, "status_code")
        if status != 200:
            code = _error_code(_get(response, "body"))
            return custom_id, InvalidModelOutput(f"batch request failed: HTTP {status}{code}", reason="batch_error")
        try:
            return custom_id, self._draft(_get(response, "body"), latency_s=0.0, discount=BATCH_DISCOUNT)
        except InvalidModelOutput as exc:
            return custom_id, exc


def make_provider(name: str, **settings: Any) -> OfflineProvider | OpenAIProvider:
    """Build a provider by name.

    Args:
        name: ``"offline"`` (settings ignored) or ``"openai"`` (settings are :class:`OpenAIProvider`'s
            keyword arguments; ``api_key``/``base_url`` default to ``None``, ``model`` to
            :data:`medbatch.defaults.LLM_MODEL`).

    Raises:
        ModelMisconfigured: an unknown name or an unusable OpenAI configuration.
    """
    key = (name or "").strip().lower()
    if key == "offline":
        return OfflineProvider()
    if key == "openai":
        settings.setdefault("api_key", None)
        settings.setdefault("base_url", None)
        if not settings.get("model"):
            settings["model"] = defaults.LLM_MODEL
        try:
            return OpenAIProvider(**settings)
        except TypeError as exc:
            raise ModelMisconfigured(f"bad settings for the openai provider: {exc}") from None
    raise ModelMisconfigured(f"unknown report provider {name!r}: expected 'offline' or 'openai'")
