"""The prompt (versioned), the draft it yields, and reading the three sections back out of an answer."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from medbatch.errors import InvalidModelOutput
from medbatch.ml.reports.facts import PatientFacts

PROMPT_VERSION = "report-v1"
"""Version of the prompt template (and of the offline template); bump it whenever either changes."""
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
