"""Score one batch of patient records: load its items, predict, write every outcome in one transaction."""

from __future__ import annotations

import logging
from typing import Any

from medbatch.pipeline.common import item_failure, measure_drift_when_done, run_batch

log = logging.getLogger("medbatch.pipeline.tabular")


def _result_rows(model: Any, items: list, preds: Any) -> list[dict]:
    probs = preds.probabilities.round(6).tolist()
    scores = preds.scores.tolist()
    classes = list(preds.classes)
    return [
        {
            "item_id": it.id,
            "model_name": model.name,
            "model_version": model.version,
            "label": label,
            "score": score,
            "detail": {"probabilities": dict(zip(classes, p, strict=True)), "threshold": model.threshold},
        }
        for it, label, score, p in zip(items, preds.labels, scores, probs, strict=True)
    ]


def predict_items(model: Any, items: list) -> tuple[list[dict], list[dict]]:
    """Predict every item; a row the model cannot score becomes a failure, never a result.

    Returns:
        ``(results, failures)`` as dicts for :func:`medbatch.db.repository.complete_batch`.
    """
    import pandas as pd

    frame = pd.DataFrame([it.payload for it in items])
    try:
        return _result_rows(model, items, model.predict(frame)), []
    except Exception:  # noqa: BLE001 - one bad row must not sink the batch: isolate it
        log.warning("batch prediction failed; scoring %d items one by one", len(items))
    results: list[dict] = []
    failures: list[dict] = []
    for i, it in enumerate(items):
        try:
            results += _result_rows(model, [it], model.predict(frame.iloc[[i]]))
        except Exception as exc:  # noqa: BLE001 - recorded as the item's error
            failures.append(item_failure(it, f"model could not score this row: {type(exc).__name__}: {exc}"))
    return results, failures


def score_batch(
    batch_id: int, *, database_url: str, max_attempts: int, expected_db: str | None = None
) -> dict[str, Any]:
    """Score a risk or treatment batch and persist the outcome.

    Idempotent: a batch that is already done writes nothing and returns ``status="skipped"``.

    Returns:
        A small summary: batch id, status, counts of results and failures.
    """
    out = run_batch(
        batch_id,
        database_url=database_url,
        max_attempts=max_attempts,
        predict=predict_items,
        expected_db=expected_db,
        workloads=("risk", "treatment"),
    )
    measure_drift_when_done(database_url, batch_id, out)
    return out
