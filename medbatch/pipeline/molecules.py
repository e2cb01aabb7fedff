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
from functools import partial
from typing import Any

from medbatch.db import repository as repo
from medbatch.db.repository import molecules as molecule_repo
from medbatch.db.session import session_scope
from medbatch.db.tables import FINISHED_JOB, JobStatus
from medbatch.errors import BrokerUnavailable
from medbatch.pipeline.common import item_failure, run_batch
from medbatch.producer.send import Send

log = logging.getLogger("medbatch.pipeline.molecules")
#: Results keep the canonical SMILES as their label; ``results.label`` holds 128 characters.
LABEL_MAX = 128


def _result_row(
    model: Any, item: Any, scored: Any, ended: bool, nll: float | None = None, tokens: int | None = None
) -> dict[str, Any]:
    detail = scored.as_dict()
    detail["slot"] = item.payload["slot"]
    detail["nll"] = nll
    detail["tokens"] = tokens
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
            scored = chem.score(g.smiles, training_set)
            results.append(_result_row(model, it, scored, g.ended, g.nll, g.tokens))
    return results, failures


def write_batch(
    session: Any, batch_id: int, job_id: int, results: list[dict], failures: list[dict], *, staged: list[int]
) -> bool:
    """Write a molecule batch (``run_batch``'s ``write``): classify each sample, and when this batch ends the
    round short of the job's count, stage the top-up round (ids appended to ``staged``) before completing it,
    so the job cannot finish in between. Returns whether the job finished."""
    from medbatch.ml import chem
    from medbatch.producer.generation import top_up_items, top_up_samples

    state = molecule_repo.lock_round(session, job_id, batch_id)
    options = state.options
    for r in results:
        d = r["detail"]
        d["outcome"], d["reason"] = chem.sample_outcome(
            d, allow_known=bool(options.get("allow_known")), min_likelihood=options.get("min_likelihood")
        )
    round_ends = state.status not in FINISHED_JOB and state.status != JobStatus.STAGING.value
    if round_ends and not state.others_unfinished and not failures and not state.errors and "max_samples" in options:
        found = molecule_repo.deliverable_molecules(session, job_id)
        found |= {r["detail"]["canonical"] for r in results if r["detail"]["outcome"] == "candidate"}
        more = top_up_samples(options, delivered=len(found), sampled=state.sampled)
        if more:
            rounds = top_up_items(options, first_slot=state.sampled, first_seq=state.next_seq, samples=more)
            for i, items in enumerate(rounds):
                staged.append(
                    repo.stage_batch(session, job_id=job_id, seq=state.next_seq + i, queue=state.queue, items=items)
                )
            repo.add_staged_counts(session, job_id, items=more, batches=len(rounds), rejected=0)
            log.info(
                "job %s: %d of %d found in %d samples; top-up of %d staged",
                job_id,
                len(found),
                options["count"],
                state.sampled,
                more,
            )
    return repo.complete_batch(session, batch_id=batch_id, job_id=job_id, results=results, failures=failures)


def finalize_job(database_url: str, job_id: int) -> dict[str, Any] | None:
    """When a molecule job has finished, decide what was delivered, flag duplicates and store its metrics
    (once; idempotent).

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
    rows.sort(key=lambda row: ((row.detail or {}).get("slot", row.item_id), row.item_id))
    records, first = [], {}
    for row in rows:
        d = dict(row.detail or {})
        if "outcome" not in d:  # written before outcomes existed
            d["outcome"], d["reason"] = chem.sample_outcome(d)
        canonical = d.get("canonical")
        if canonical:
            if canonical in first:
                d["duplicate_of"] = first[canonical]
            first.setdefault(canonical, row.item_id)
        records.append(d)
    requested = options.get("count") if "max_samples" in options else None
    updates = {}
    for row, d, (outcome, reason) in zip(rows, records, chem.deliver(records, requested), strict=True):
        d["outcome"], d["reason"] = outcome, reason
        if d != (row.detail or {}):
            updates[row.id] = (row.detail or {}, d)
    fingerprints: dict = {}  # the raw and delivered IntDiv subsamples share most molecules
    metrics = chem.set_metrics(records, intdiv_seed=int(options.get("seed", 0)), fingerprints=fingerprints)
    delivered = chem.delivery_metrics(
        records,
        requested=requested,
        max_samples=options.get("max_samples"),
        intdiv_seed=int(options.get("seed", 0)),
        fingerprints=fingerprints,
    )
    delivered.update(allow_known=bool(options.get("allow_known")), min_likelihood=options.get("min_likelihood"))
    metrics.update(
        delivered=delivered,
        items_failed=counts["items_failed"],
        seed=options.get("seed"),
        temperature=options.get("temperature"),
        reference={"name": MOSES_CHARRNN_NAME, **MOSES_CHARRNN},
    )
    with session_scope(database_url) as s:
        molecule_repo.write_outcomes(s, updates)
        repo.set_job_metrics(s, job_id, metrics)
    log.info(
        "job %s finished: %d sampled, validity %s, %d delivered of %s, %d duplicates flagged",
        job_id,
        metrics["generated"],
        metrics["validity"],
        delivered["delivered"],
        requested,
        metrics["duplicates"],
    )
    return metrics


def generate_batch(
    batch_id: int,
    *,
    database_url: str,
    max_attempts: int,
    expected_db: str | None = None,
    send: Send | None = None,
) -> dict[str, Any]:
    """Generate, score and persist one batch; send a top-up round it staged (with ``send``; without one it
    stays ``pending`` for ``resume`` or the reconciler); finalise the job when it has finished.

    Idempotent: a batch that is already done writes nothing and returns ``status="skipped"``.
    """
    from medbatch.producer.generation import send_staged

    staged: list[int] = []
    out = run_batch(
        batch_id,
        database_url=database_url,
        max_attempts=max_attempts,
        predict=generate_items,
        expected_db=expected_db,
        workloads=("molecules",),
        write=partial(write_batch, staged=staged),
    )
    job_id = out.get("job_id")  # run_batch's summary names the job, except for a batch already done
    if job_id is None:
        with session_scope(database_url) as s:
            job_id = repo.job_of_batch(s, batch_id)
    if staged:
        out["top_up_batches"] = len(staged)
        if send is not None:
            try:
                send_staged(database_url, send, job_id)
            except BrokerUnavailable as exc:  # committed: the reconciler (or `resume`) sends the pending batches
                log.warning("job %s: top-up round staged but not sent (%s)", job_id, exc)
    finalize_job(database_url, job_id)
    return out
