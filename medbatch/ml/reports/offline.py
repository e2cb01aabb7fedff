"""The offline provider: deterministic template reports, no key, no network, labelled as not model-written."""

from __future__ import annotations

import re
import time
from typing import Any

from medbatch.ml.reports.facts import PatientFacts
from medbatch.ml.reports.prompt import _SECTION_KEYS, _SECTION_TITLES, PROMPT_VERSION, ReportDraft

OFFLINE_LABEL = "OFFLINE TEMPLATE DRAFT - not written by a language model - requires clinician review"
"""First line of every offline report."""
OFFLINE_MODEL = "offline-template"


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
