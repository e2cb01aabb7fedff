"""Generate one batch of molecules: sample with the batch's seed, score with RDKit, write every outcome at once.

A generated string that RDKit rejects is a **result** with ``valid = false`` and the reason, not an item
error: the model did what was asked, and invalid output is part of what a job measures (validity).
Item errors are kept for failures (no model, a tampered artifact, a dead-lettered batch).

When the job's last batch is written, the job is finalised: duplicates within the job are flagged on
every repeat (``detail.duplicate_of`` = the item that generated the molecule first) and counted, and
the MOSES metrics are stored on the job. Finalising is idempotent; ``medbatch status`` runs it for a
finished job whose worker died before it could.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

from medbatch.db import repository as repo
from medbatch.db.session import session_scope
from medbatch.db.tables import FINISHED_JOB
from medbatch.pipeline.common import item_failure, run_batch

log = logging.getLogger("medbatch.pipeline.molecules")
#: Results keep the canonical SMILES as their label; ``results.label`` holds 128 characters.
LABEL_MAX = 128


def _result_row(model: Any, item: Any, scored: Any, ended: bool) -> dict[str, Any]:
    detail = scored.as_dict()
    detail["slot"] = item.payload["slot"]
    if not ended:
        detail["truncated"] = True
        if not scored.valid:
            detail["reason"] = f"no end token within the length limit; {detail['reason']}"
    label = scored.canonical
    if label is not None and len(label) > LABEL_MAX:
        label = label[: LABEL_MAX - 3] + "..."  # the full SMILES is in detail.canonical
    return {
        "item_id": item.id,
        "model_name": model.name,
        "model_version": model.version,
        "label": label,
        "score": scored.qed,
        "detail": detail,
    }


def generate_items(model: Any, items: list, *, training_set: Any | None = None) -> tuple[list[dict], list[dict]]:
    """Regenerate every pending item's molecule from its batch seed and score it.

    Items are grouped by (seed, n, temperature): one sampling pass per group, each item keeps the
    ``k``-th sequence. Returns ``(results, failures)`` for :func:`medbatch.db.repository.complete_batch`.
    """
    from medbatch.ml import chem

    if training_set is None:
        training_set = chem.moses_training_set()
    groups: dict[tuple, list] = defaultdict(list)
    for it in items:
        p = it.payload
        groups[(int(p["seed"]), int(p["n"]), float(p["temperature"]))].append(it)
    results: list[dict] = []
    failures: list[dict] = []
    for (seed, n, temperature), members in groups.items():
        generated = model.sample(n, seed=seed, temperature=temperature)
        for it in members:
            k = int(it.payload["k"])
            if not 0 <= k < n:
                failures.append(item_failure(it, f"slot position {k} is outside its batch of {n}"))
                continue
            g = generated[k]
            results.append(_result_row(model, it, chem.score(g.smiles, training_set), g.ended))
    return results, failures


def finalize_job(database_url: str, job_id: int) -> dict[str, Any] | None:
    """When a molecule job has finished, flag its duplicates and store its metrics (once; idempotent).

    Returns:
        The job's metrics, or None when the job is not a finished molecule job.
    """
    from medbatch.ml import chem
    from medbatch.ml.moses import MOSES_CHARRNN, MOSES_CHARRNN_NAME

    with session_scope(database_url) as s:
        job = repo.get_job(s, job_id)
        if job.workload != "molecules" or job.status not in FINISHED_JOB:
            return None
        if job.metrics is not None:
            return job.metrics
        options = dict(job.options or {})
        counts = repo.job_counts(s, job_id)
        rows = repo.job_result_rows(s, job_id)
    records, updates, first = [], {}, {}
    for row in rows:
        d = dict(row.detail or {})
        canonical = d.get("canonical")
        records.append(d)
        if canonical:
            if canonical in first and d.get("duplicate_of") != first[canonical]:
                updates[row.id] = {**d, "duplicate_of": first[canonical]}
            first.setdefault(canonical, row.item_id)
    metrics = chem.set_metrics(records, intdiv_seed=int(options.get("seed", 0)))
    metrics.update(
        items_failed=counts["items_failed"],
        seed=options.get("seed"),
        temperature=options.get("temperature"),
        reference={"name": MOSES_CHARRNN_NAME, **MOSES_CHARRNN},
    )
    with session_scope(database_url) as s:
        repo.update_result_details(s, updates)
        repo.set_job_metrics(s, job_id, metrics)
    log.info(
        "job %s finished: %d generated, validity %s, %d duplicates flagged",
        job_id,
        metrics["generated"],
        metrics["validity"],
        len(updates),
    )
    return metrics


def generate_batch(
    batch_id: int, *, database_url: str, max_attempts: int, expected_db: str | None = None
) -> dict[str, Any]:
    """Generate, score and persist one batch; finalise the job when it was the last one.

    Idempotent: a batch that is already done writes nothing and returns ``status="skipped"``.
    """
    out = run_batch(
        batch_id,
        database_url=database_url,
        max_attempts=max_attempts,
        predict=generate_items,
        expected_db=expected_db,
        workloads=("molecules",),
    )
    with session_scope(database_url) as s:
        job_id = repo.job_of_batch(s, batch_id)
    finalize_job(database_url, job_id)
    return out
