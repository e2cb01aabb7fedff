"""Score one batch of patient records: load its items, predict, write every outcome in one transaction."""

from __future__ import annotations

import logging
from typing import Any

from medbatch.pipeline.common import run_batch

log = logging.getLogger("medbatch.pipeline.tabular")


def predict_items(model: Any, items: list) -> tuple[list[dict], list[dict]]:
    """Predict every item; a row the model cannot score becomes a failure, never a result.

    Returns:
        ``(results, failures)`` as dicts for :func:`medbatch.db.repository.complete_batch`.
    """
    import pandas as pd

    frame = pd.DataFrame([it.payload for it in items])
    try:
        preds = model.predict(frame)
        scored = [(i, preds, i) for i in range(len(items))]
        failures: list[dict] = []
    except Exception:  # one bad row must not sink the batch: isolate it
        log.warning("batch prediction failed; scoring items one by one", exc_info=False)
        scored, failures = [], []
        for i, it in enumerate(items):
            try:
                scored.append((i, model.predict(frame.iloc[[i]]), 0))
            except Exception as exc:  # noqa: BLE001 - recorded as the item's error
                failures.append(_failure(it, f"model could not score this row: {type(exc).__name__}: {exc}"))
    results = []
    for i, preds, j in scored:
        it = items[i]
        probs = {c: round(float(p), 6) for c, p in zip(preds.classes, preds.probabilities[j], strict=True)}
        results.append(
            {
                "item_id": it.id,
                "model_name": model.name,
                "model_version": model.version,
                "label": preds.labels[j],
                "score": float(preds.scores[j]),
                "detail": {"probabilities": probs, "threshold": model.threshold},
            }
        )
    return results, failures


def _failure(item: Any, reason: str) -> dict:
    return {
        "item_id": item.id,
        "source_uri": item.source_uri,
        "source_row": item.source_row,
        "patient_ref": item.patient_ref,
        "reason": reason,
    }


def score_batch(batch_id: int, *, database_url: str, max_attempts: int) -> dict[str, Any]:
    """Score a risk or treatment batch and persist the outcome.

    Idempotent: a batch that is already done writes nothing and returns ``status="skipped"``.

    Returns:
        A small summary: batch id, status, counts of results and failures.
    """
    return run_batch(batch_id, database_url=database_url, max_attempts=max_attempts, predict=predict_items)
