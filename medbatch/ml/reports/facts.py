"""Minimum necessary (HIPAA): a patient record reduced to the de-identified facts a prompt may see.

:func:`minimum_necessary` is the only way a record becomes :class:`PatientFacts`. It keeps an allow-list
of clinical fields, turns a date of birth into an age in whole years (ages over 89 become 90, as Safe
Harbor requires), scrubs allow-listed free text of contact details, record numbers, URLs and dates, and
drops everything else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

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
