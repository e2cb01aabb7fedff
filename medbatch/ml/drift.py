"""Drift: how far tonight's inputs and scores are from what a model was trained and measured on.

A model artifact stores a compact *reference* (:func:`reference`): per input feature, the training split's
decile cut points with the share of training rows in each bin, and its minimum and maximum; and the same
for the held-out scores. :func:`compare` measures a job against it:

* PSI (population stability index) per feature: ``sum((a - e) * ln(a / e))`` over the reference bins,
  ``e`` the training share and ``a`` tonight's share (both floored at :data:`PSI_FLOOR`);
* the share of rows outside the training range, per feature;
* the score distribution's PSI and mean against the held-out scores.

A feature is *flagged* when its PSI is above ``psi_max`` (only with at least ``min_rows_for_psi`` rows: a
PSI of 30 rows is mostly noise) or more than ``out_of_range_max`` of its rows lie outside the training
range. Plain numpy: no Celery, no SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medbatch import defaults

#: Deciles: the reference's bins per feature (fewer when the feature takes fewer distinct values).
REFERENCE_BINS = 10
#: Share a bin is floored at, so an empty bin gives a large but finite PSI.
PSI_FLOOR = 1e-4
REFERENCE_FORMAT = "medbatch-drift-reference-1"


def _bins(values: np.ndarray) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    qs = np.quantile(values, np.linspace(0, 1, REFERENCE_BINS + 1)[1:-1]) if len(values) else np.array([])
    edges = np.unique(qs)
    return {
        "edges": [float(e) for e in edges],
        "expected": [float(s) for s in _shares(values, edges)],
        "min": float(values.min()) if len(values) else None,
        "max": float(values.max()) if len(values) else None,
        "mean": float(values.mean()) if len(values) else None,
        "n": int(len(values)),
    }


def _shares(values: np.ndarray, edges) -> np.ndarray:
    """Share of ``values`` per bin; bin i holds edges[i-1] < v <= edges[i] (right-closed), so a value equal
    to a cut point (common for discrete features) falls in the same bin in training and tonight."""
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)
    return counts / max(len(values), 1)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two share vectors over the same bins."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def reference(features: Mapping[str, np.ndarray], scores: np.ndarray | None = None) -> dict[str, Any]:
    """The compact reference a model artifact stores: per feature (training split) and of the held-out scores."""
    out: dict[str, Any] = {"format": REFERENCE_FORMAT, "features": {k: _bins(v) for k, v in features.items()}}
    if scores is not None:
        out["scores"] = _bins(np.asarray(scores))
    return out


def compare(
    ref: Mapping[str, Any],
    features: Mapping[str, np.ndarray],
    scores: np.ndarray | None = None,
    *,
    psi_max: float = defaults.DRIFT_PSI_MAX,
    out_of_range_max: float = defaults.DRIFT_OUT_OF_RANGE_MAX,
    min_rows_for_psi: int = defaults.DRIFT_MIN_ROWS_FOR_PSI,
) -> dict[str, Any]:
    """Measure tonight's ``features`` (name -> values) and ``scores`` against a stored reference.

    Returns:
        ``{"n", "features": {name: {"psi", "out_of_range", "out_of_range_share", "mean", "reference_mean"}},
        "scores": {"psi", "mean", "reference_mean"} | None, "flagged": [feature names], "thresholds": {...}}``;
        ``flagged`` is empty when nothing drifted. A feature absent from the reference is skipped.
    """
    per_feature: dict[str, dict[str, Any]] = {}
    flagged: list[str] = []
    n = 0
    for name, raw in features.items():
        spec = (ref.get("features") or {}).get(name)
        if spec is None:
            continue
        values = np.asarray(raw, dtype=np.float64)
        values = values[np.isfinite(values)]
        n = max(n, len(values))
        if not len(values):
            continue
        value = psi(spec["expected"], _shares(values, spec["edges"]))
        outside = int(np.sum((values < spec["min"]) | (values > spec["max"])))
        share = outside / len(values)
        per_feature[name] = {
            "psi": round(value, 4),
            "out_of_range": outside,
            "out_of_range_share": round(share, 4),
            "mean": round(float(values.mean()), 4),
            "reference_mean": spec.get("mean"),
            "reference_range": [spec["min"], spec["max"]],
        }
        if (value > psi_max and len(values) >= min_rows_for_psi) or share > out_of_range_max:
            flagged.append(name)
    score_block = None
    if scores is not None and ref.get("scores") and len(scores):
        spec = ref["scores"]
        s = np.asarray(scores, dtype=np.float64)
        s = s[np.isfinite(s)]
        if len(s):
            score_block = {
                "psi": round(psi(spec["expected"], _shares(s, spec["edges"])), 4),
                "mean": round(float(s.mean()), 4),
                "reference_mean": spec.get("mean"),
            }
    return {
        "n": int(n),
        "features": per_feature,
        "scores": score_block,
        "flagged": flagged,
        "thresholds": {"psi_max": psi_max, "out_of_range_max": out_of_range_max, "min_rows_for_psi": min_rows_for_psi},
    }
