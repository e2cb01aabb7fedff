"""Measure a finished job's drift against its model's training reference and store it as ``jobs.metrics``.

One code path for every measured workload (risk, treatment, X-ray): the inputs differ, the comparison
(:func:`medbatch.ml.drift.compare`) and where it is stored do not. A tabular job's inputs are its items'
validated payloads (the model's features); an X-ray job's are the per-image features each result's
``detail["input_features"]`` recorded when it was classified (:func:`medbatch.ml.xray.input_features`), so the
measure reads the database, the source of truth, and is the same after a re-delivered batch.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from medbatch.db import repository as repo
from medbatch.db.rawjson import records_frame
from medbatch.db.session import session_scope

log = logging.getLogger("medbatch.pipeline.drift")


def _column(frame: Any, name: str) -> np.ndarray:
    """Feature ``name`` of the payloads as floats; NaN where a payload lacks it."""
    import pandas as pd

    if name not in frame.columns:
        return np.full(len(frame), np.nan)
    return pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def finalize_job(database_url: str, job_id: int) -> dict[str, Any] | None:
    """When a risk, treatment or X-ray job has finished, measure its drift against the model's training
    reference (per-feature PSI, share outside the training range, score shift) and store it as
    ``jobs.metrics["drift"]``.

    Once per job (idempotent). Returns the job's metrics, or None when the job is not a finished measured job.
    A tabular model without a stored reference gets ``{"drift": {"available": false, ...}}``; an X-ray model
    trained before X-ray drift existed stores ``{}`` (no drift block, measured once).
    """
    from medbatch.db.tables import FINISHED_JOB
    from medbatch.ml import drift, registry
    from medbatch.ml.xray.artifact import read_meta as xray_meta

    with session_scope(database_url) as s:
        job = repo.get_job(s, job_id)
        if job.workload not in repo.DRIFT_WORKLOADS or job.status not in FINISHED_JOB:
            return None
        if job.metrics is not None:
            return job.metrics
        workload, name, version = job.workload, job.model_name, job.model_version
        uri = repo.find_model(s, name, version).uri
        rows = repo.job_scored_details(s, job_id) if workload == "xray" else repo.job_scored_inputs(s, job_id)
    if workload == "xray":  # meta.json is enough: no TensorFlow when measured after the worker (medbatch status)
        model = registry.cached(name, version)
        meta = model.metadata if model is not None else xray_meta(registry.verified_bytes(name, version, uri), uri)
    else:
        model = registry.load(name, version, uri)
        meta = getattr(model, "metadata", None)
    reference = (meta or {}).get("drift_reference")
    if not reference and workload == "xray":
        metrics: dict[str, Any] = {}
    elif not reference:
        metrics = {"drift": {"available": False, "reason": "the model stores no training reference", "flagged": []}}
    else:
        sample, sample_scores = rows  # result details (X-ray) or payload texts, and the scores
        if workload == "xray":
            names = list(reference.get("features") or {})
            inputs = [(d.get("input_features") or {}) for d in sample]
            features = {f: np.array([float(p.get(f, np.nan)) for p in inputs], dtype=np.float64) for f in names}
        else:
            frame = records_frame(sample)
            features = {f: _column(frame, f) for f in model.features}
        scores = np.array([np.nan if sc is None else sc for sc in sample_scores], dtype=np.float64)
        metrics = {"drift": {"available": True, **drift.compare(reference, features, scores)}}
    with session_scope(database_url) as s:
        repo.set_job_metrics(s, job_id, metrics)
    flagged = (metrics.get("drift") or {}).get("flagged")
    if flagged:
        log.warning("job %s: input drift in %s", job_id, ", ".join(flagged))
    return metrics
