"""Repository functions: every read and state change of jobs, batches, items, results, models and the
nightly inbox, one module per aggregate.

- :mod:`~medbatch.db.repository.bulk`: COPY / multi-row INSERT and idempotent inserts
- :mod:`~medbatch.db.repository.staging`: the producer's side of a job (create, stage, send, finish staging)
- :mod:`~medbatch.db.repository.batches`: the worker's side (claim, write outcomes, release, dead-letter, finish)
- :mod:`~medbatch.db.repository.queries`: reading jobs, results and errors
- :mod:`~medbatch.db.repository.identity`: this database's identity, checked against every message
- :mod:`~medbatch.db.repository.auditing`: the audit trail
- :mod:`~medbatch.db.repository.models`: the model registry
- :mod:`~medbatch.db.repository.monitoring`: the Prometheus exporter's cheap queries
- :mod:`~medbatch.db.repository.inbox`: the nightly run's inbox ledger (:class:`InboxStatus`)
- :mod:`~medbatch.db.repository.morning`: the morning summary's read-only queries
- :mod:`~medbatch.db.repository.reviews`: reviewers' verdicts and per-version agreement
- :mod:`~medbatch.db.repository.drift`: a job's scored inputs (tabular) or image features (X-ray) for drift

Everything is re-exported here, so callers write ``from medbatch.db import repository as repo`` and
``repo.claim_batch(...)``. Functions take an open :class:`~sqlalchemy.orm.Session` and leave committing
to the caller's ``session_scope``, so a caller can make several changes in one transaction. State changes
happen in this package only.
"""

from __future__ import annotations

from medbatch.db.repository.auditing import (
    audit,
    audit_events,
)
from medbatch.db.repository.batches import (
    ClaimedBatch,
    check_row_id,
    claim_batch,
    complete_batch,
    dead_letter_batch,
    finish_job_if_done,
    load_job_pending_items,
    load_pending_items,
    mark_job_batches,
    release_batch,
    set_job_metrics,
    stuck_batches,
    update_job_options,
    update_result_details,
    write_outcomes,
)
from medbatch.db.repository.bulk import (
    INSERT_CHUNK,
    bulk_insert,
    insert_ignore_conflicts,
)
from medbatch.db.repository.deliveries import (
    claim_study,
    deliveries_for,
    delivery_counts,
    delivery_failures,
    export_rows,
    job_for_claim,
    mark_study_staged,
    open_claims,
    pacs_return_due,
    received_counts,
    received_instance,
    record_delivery,
    record_received,
    release_study_claim,
    settled_studies,
)
from medbatch.db.repository.drift import (
    DRIFT_WORKLOADS,
    job_scored_details,
    job_scored_inputs,
    monitoring_latest_drift,
)
from medbatch.db.repository.identity import (
    check_instance,
    instance_id,
)
from medbatch.db.repository.inbox import (
    InboxStatus,
    claim_entries,
    forget_entries,
    job_for_source,
    lost_claims,
    night_entries,
    reject_entries,
    relink_lost_claim,
    take_entries,
    taken_pairs,
)
from medbatch.db.repository.models import (
    activate_model,
    active_model,
    find_model,
    list_models,
    register_model,
)
from medbatch.db.repository.monitoring import (
    QueueBacklog,
    limit_statement_time,
    monitoring_item_counts,
    monitoring_job_counts,
    monitoring_last_batch_finished,
    monitoring_llm_usage,
    monitoring_unfinished_batches,
)
from medbatch.db.repository.morning import (
    dead_batches,
    error_groups,
    flagged_xrays,
    jobs_between,
    label_totals,
    llm_usage,
    model_usage,
    reason_group,
    reports_to_review,
    results_per_minute,
    scores,
)
from medbatch.db.repository.queries import (
    count_batches,
    get_job,
    iter_errors,
    iter_item_findings,
    iter_results,
    job_counts,
    job_of_batch,
    job_result_rows,
    label_counts,
    latest_findings,
    list_jobs,
    result_detail_keys,
    tokens_spent,
    unfinished_batches,
)
from medbatch.db.repository.reviews import (
    REPORT_VERDICTS,
    RESULT_VERDICTS,
    resolve_report,
    resolve_result,
    review_agreement,
    store_review,
)
from medbatch.db.repository.scoring import (
    PendingInputs,
    ScoredColumns,
    load_pending_inputs,
    write_scored_batch,
)
from medbatch.db.repository.staging import (
    ItemColumns,
    add_staged_counts,
    committed_chunk,
    create_job,
    finish_staging,
    mark_batches_queued,
    mark_batches_resent,
    record_rejections,
    stage_batch,
    stage_batches,
)

__all__ = [
    "ItemColumns",
    "PendingInputs",
    "ScoredColumns",
    "load_pending_inputs",
    "write_scored_batch",
    "DRIFT_WORKLOADS",
    "REPORT_VERDICTS",
    "RESULT_VERDICTS",
    "resolve_report",
    "resolve_result",
    "review_agreement",
    "store_review",
    "ClaimedBatch",
    "INSERT_CHUNK",
    "InboxStatus",
    "QueueBacklog",
    "activate_model",
    "active_model",
    "add_staged_counts",
    "committed_chunk",
    "audit",
    "audit_events",
    "bulk_insert",
    "check_instance",
    "check_row_id",
    "claim_batch",
    "claim_entries",
    "claim_study",
    "complete_batch",
    "count_batches",
    "create_job",
    "dead_batches",
    "dead_letter_batch",
    "deliveries_for",
    "delivery_counts",
    "delivery_failures",
    "error_groups",
    "export_rows",
    "find_model",
    "finish_job_if_done",
    "finish_staging",
    "flagged_xrays",
    "forget_entries",
    "get_job",
    "insert_ignore_conflicts",
    "instance_id",
    "job_scored_details",
    "job_scored_inputs",
    "monitoring_latest_drift",
    "iter_errors",
    "iter_item_findings",
    "iter_results",
    "job_counts",
    "job_for_claim",
    "job_for_source",
    "job_of_batch",
    "job_result_rows",
    "jobs_between",
    "label_counts",
    "label_totals",
    "latest_findings",
    "limit_statement_time",
    "list_jobs",
    "list_models",
    "llm_usage",
    "load_job_pending_items",
    "load_pending_items",
    "lost_claims",
    "mark_batches_queued",
    "mark_batches_resent",
    "mark_job_batches",
    "mark_study_staged",
    "model_usage",
    "monitoring_item_counts",
    "monitoring_job_counts",
    "monitoring_last_batch_finished",
    "monitoring_llm_usage",
    "monitoring_unfinished_batches",
    "night_entries",
    "open_claims",
    "pacs_return_due",
    "reason_group",
    "received_counts",
    "received_instance",
    "record_delivery",
    "record_received",
    "record_rejections",
    "register_model",
    "reject_entries",
    "release_batch",
    "release_study_claim",
    "relink_lost_claim",
    "reports_to_review",
    "result_detail_keys",
    "results_per_minute",
    "scores",
    "set_job_metrics",
    "settled_studies",
    "stage_batch",
    "stage_batches",
    "stuck_batches",
    "take_entries",
    "taken_pairs",
    "tokens_spent",
    "unfinished_batches",
    "update_job_options",
    "update_result_details",
    "write_outcomes",
]
