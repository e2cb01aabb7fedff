"""Score one batch of patient records: read its inputs as columns, predict, write every outcome in one transaction."""

from __future__ import annotations

import logging
from typing import Any

from medbatch.db.repository.scoring import PendingInputs, ScoredColumns, load_pending_inputs, write_scored_batch
from medbatch.pipeline.common import item_failure, measure_drift_when_done, run_batch

log = logging.getLogger("medbatch.pipeline.tabular")


def _scored(model: Any, ids: list[int], preds: Any) -> ScoredColumns:
    return ScoredColumns(
        model_name=model.name,
        model_version=model.version,
        item_ids=ids,
        labels=preds.labels,
        scores=preds.scores,
        probabilities=preds.probabilities,
        classes=list(preds.classes),
        threshold=model.threshold,
    )


def predict_items(model: Any, items: PendingInputs) -> tuple[ScoredColumns, list[dict]]:
    """Predict every item in one call; a row the model cannot score becomes a failure, never a result.

    Returns:
        ``(results, failures)`` for :func:`medbatch.db.repository.scoring.write_scored_batch`.
    """
    frame = items.frame()
    try:
        return _scored(model, items.ids, model.predict(frame)), []
    except Exception:  # noqa: BLE001 - one bad row must not sink the batch: isolate it
        log.warning("batch prediction failed; scoring %d items one by one", len(items))
    good: list[int] = []
    failures: list[dict] = []
    for i in range(len(items)):
        try:
            model.predict(frame.iloc[[i]])
            good.append(i)
        except Exception as exc:  # noqa: BLE001 - recorded as the item's error
            failures.append(item_failure(items.item(i), f"model could not score this row: {type(exc).__name__}: {exc}"))
    if not good:
        return _scored(model, [], model.predict(frame.iloc[[]])), failures
    whole = model.predict(frame.iloc[good])  # the rows that score alone score together
    return _scored(model, [items.ids[i] for i in good], whole), failures


def _write(session: Any, batch_id: int, job_id: int, results: Any, failures: list[dict]) -> bool:
    if not isinstance(results, ScoredColumns):  # a model that could not be used: no results, every item failed
        results = ScoredColumns("", "", [], [], None, None, [], None)
    return write_scored_batch(session, batch_id=batch_id, job_id=job_id, scored=results, failures=failures)


def score_batch(
    batch_id: int, *, database_url: str, max_attempts: int, expected_db: str | None = None
) -> dict[str, Any]:
    """Score a risk or treatment batch and persist the outcome.

    Idempotent: a batch that is already done writes nothing and returns ``status="skipped"``.

    Returns:
        A small summary: batch id, status, counts of results and failures, seconds per phase.
    """
    out = run_batch(
        batch_id,
        database_url=database_url,
        max_attempts=max_attempts,
        predict=predict_items,
        expected_db=expected_db,
        workloads=("risk", "treatment"),
        load=load_pending_inputs,
        write=_write,
    )
    measure_drift_when_done(database_url, out)
    return out
