"""Reviewers' verdicts: resolving a reviewed row to its result or report draft, storing verdicts all or
nothing, and per-model-version agreement with the reviewers (always with its counts)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from medbatch.db.tables import Item, Model, Report, Result, Review

RESULT_VERDICTS = ("agree", "disagree")
REPORT_VERDICTS = ("approved", "edited", "rejected")
#: The positive class per model name, for PPV and sensitivity against the reviewers.
POSITIVE_LABEL = {"risk": "high", "xray": "pneumonia"}


def resolve_result(
    session: Session,
    *,
    result_id: int | None = None,
    item_id: int | None = None,
    source: str | None = None,
    patient_id: str | None = None,
) -> tuple[Result | None, str | None]:
    """``(result, None)`` or ``(None, why not)`` for a reviewed row naming a result, an item, or source + patient."""
    if result_id is not None:
        result = session.get(Result, result_id)
        return (result, None) if result else (None, f"no result {result_id}")
    if item_id is not None:
        result = session.scalars(select(Result).where(Result.item_id == item_id)).one_or_none()
        return (result, None) if result else (None, f"no result for item {item_id}")
    if source and patient_id:
        rows = list(
            session.scalars(
                select(Result)
                .join(Item, Item.id == Result.item_id)
                .where(Item.source_uri == source, Item.patient_ref == patient_id)
            )
        )
        if len(rows) == 1:
            return rows[0], None
        if not rows:
            return None, "no result for that source and patient id"
        return None, f"{len(rows)} results match that source and patient id: give result_id"
    return None, "names no result: give result_id, item_id, or source and patient_id"


def resolve_report(session: Session, report_id: int) -> tuple[Report | None, str | None]:
    report = session.get(Report, report_id)
    return (report, None) if report else (None, f"no report draft {report_id}")


def store_review(
    session: Session,
    *,
    kind: str,
    target: Result | Report,
    verdict: str,
    corrected_label: str | None,
    reviewer: str,
    reviewed_at: datetime,
) -> None:
    """Add a verdict, or replace this reviewer's earlier verdict on the same result or draft."""
    is_result = kind == "result"
    match = select(Review).where(Review.kind == kind, Review.reviewer == reviewer)
    match = match.where(Review.result_id == target.id) if is_result else match.where(Review.report_id == target.id)
    review = session.scalars(match).one_or_none()
    if review is None:
        review = Review(kind=kind, reviewer=reviewer)
        session.add(review)
    review.result_id = target.id if is_result else None
    review.report_id = None if is_result else target.id
    review.job_id = target.job_id
    review.model_name = target.model_name if is_result else target.provider
    review.model_version = target.model_version if is_result else f"{target.model} {target.prompt_version}"
    review.predicted_label = target.label if is_result else None
    review.verdict = verdict
    review.corrected_label = corrected_label
    review.reviewed_at = reviewed_at


def review_agreement(session: Session) -> dict[tuple[str, str], dict[str, Any]]:
    """Per ``(model name, version)``: reviewed count, agreement, PPV and sensitivity against the reviewers,
    each as ``{"k", "n", "rate"}`` (rate None when n is 0); report drafts: counts per verdict.

    The reviewer's truth is the predicted label when they agree, the corrected label when they give one,
    and otherwise (a binary model) the other class; a disagreement without correction on a model of more
    classes counts towards agreement only.
    """
    models = list(session.scalars(select(Model)))
    classes = {(m.name, m.version): list((m.metrics or {}).get("classes") or []) for m in models}
    positive_of = {(m.name, m.version): (m.metrics or {}).get("positive_class") for m in models}
    tallies: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"kind": "result", "reviewed": 0, "agree": 0, "tp": 0, "fp": 0, "fn": 0, "verdicts": defaultdict(int)}
    )
    for r in session.scalars(select(Review)):
        key = (r.model_name, r.model_version)
        t = tallies[key]
        t["kind"] = r.kind
        t["reviewed"] += 1
        t["verdicts"][r.verdict] += 1
        if r.kind != "result":
            continue
        t["agree"] += r.verdict == "agree"
        positive = POSITIVE_LABEL.get(r.model_name) or positive_of.get(key)
        if positive is None:
            continue
        predicted = r.predicted_label
        if r.verdict == "agree":
            truth = predicted
        elif r.corrected_label:
            truth = r.corrected_label
        elif len(classes.get(key) or []) == 2 or r.model_name in POSITIVE_LABEL:
            truth = "positive-not" if predicted == positive else positive
        else:
            continue
        t["tp"] += predicted == positive and truth == positive
        t["fp"] += predicted == positive and truth != positive
        t["fn"] += predicted != positive and truth == positive
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key, t in tallies.items():
        if t["kind"] == "report":
            out[key] = {"kind": "report", "reviewed": t["reviewed"], "verdicts": dict(t["verdicts"])}
            continue
        out[key] = {
            "kind": "result",
            "reviewed": t["reviewed"],
            "agreement": _rate(t["agree"], t["reviewed"]),
            "ppv": _rate(t["tp"], t["tp"] + t["fp"]),
            "sensitivity": _rate(t["tp"], t["tp"] + t["fn"]),
            "verdicts": dict(t["verdicts"]),
        }
    return out


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"k": int(k), "n": int(n), "rate": (k / n) if n else None}
