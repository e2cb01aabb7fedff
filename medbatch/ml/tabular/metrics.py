"""Held-out metrics of the tabular models: binary and class blocks, cross-validated AUC, subgroups.

Thresholds, rates at a threshold and calibration bins come from :mod:`medbatch.ml.evaluation`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, brier_score_loss, confusion_matrix, roc_auc_score
from sklearn.model_selection import StratifiedKFold

from medbatch.ml import evaluation
from medbatch.ml.tabular.contract import RISK_CLASSES

AGE_BANDS = (("<45", None, 45.0), ("45-59", 45.0, 60.0), ("60+", 60.0, None))
"""Age bands (years) for subgroup metrics: lower bound inclusive, upper bound exclusive."""
CALIBRATION_MIN_ROWS_PER_BIN = 30
"""Fewer bins than 10 are used when the held-out split would leave fewer rows than this per bin."""


def _auc(y: np.ndarray, proba: np.ndarray, classes: list[str]) -> float | None:
    """Binary AUC of the last column, or macro one-vs-rest AUC over classes that have both outcomes."""
    y = np.asarray(y)
    if len(set(y.tolist())) < 2:
        return None
    if len(classes) == 2:
        return float(roc_auc_score(y == classes[1], proba[:, 1]))
    per_class = []
    for i, c in enumerate(classes):
        hit = y == c
        if 0 < hit.sum() < len(y):
            per_class.append(roc_auc_score(hit, proba[:, i]))
    return float(np.mean(per_class)) if per_class else None


def _cv_auc(y: np.ndarray, oof: np.ndarray, folds: StratifiedKFold) -> dict:
    # Out-of-fold predictions come from the same folds, so per-fold AUCs are exact fold scores.
    scores = [roc_auc_score(y[test], oof[test]) for _, test in folds.split(np.zeros(len(y)), y)]
    return {"mean": float(np.mean(scores)), "sd": float(np.std(scores, ddof=1)), "folds": len(scores)}


def _cv_auc_multi(y: np.ndarray, oof: np.ndarray, classes: list[str], folds: StratifiedKFold) -> dict:
    scores = [_auc(y[test], oof[test], classes) for _, test in folds.split(np.zeros(len(y)), y)]
    scores = [s for s in scores if s is not None]
    return {"mean": float(np.mean(scores)), "sd": float(np.std(scores, ddof=1)), "folds": len(scores)}


def _calibration_bins(y_pos: np.ndarray, p: np.ndarray) -> list[dict]:
    """Quantile bins of predicted probability: mean predicted vs observed rate per bin."""
    return evaluation.calibration_bins(y_pos, p, min_rows_per_bin=CALIBRATION_MIN_ROWS_PER_BIN)


def _binary_block(y: np.ndarray, p: np.ndarray, threshold: float, *, with_calibration: bool) -> dict:
    y_pos = y == 1
    predicted = p >= threshold
    labels = np.where(predicted, "high", "low")
    truth = np.where(y_pos, "high", "low")
    block = {
        "auc": float(roc_auc_score(y_pos, p)),
        "accuracy": float(accuracy_score(truth, labels)),
        "brier": float(brier_score_loss(y_pos, p)),
        "confusion_matrix": {
            "labels": RISK_CLASSES,
            "rows": "true",
            "columns": "predicted",
            "matrix": confusion_matrix(truth, labels, labels=RISK_CLASSES).tolist(),
        },
        "at_threshold": evaluation.rates(y_pos, predicted),
    }
    if with_calibration:
        block["calibration_bins"] = _calibration_bins(y_pos, p)
        block["ece"] = evaluation.expected_calibration_error(y_pos, p)
    return block


def _class_block(
    y: np.ndarray,
    proba: np.ndarray,
    classes: list[str],
    positive: str | None,
    *,
    with_calibration: bool,
    threshold: float | None = None,
) -> dict:
    """Held-out block of a plan classifier: labels by ``threshold`` on P(positive) when given, else argmax."""
    if threshold is not None and positive is not None:
        col = classes.index(positive)
        predicted = np.asarray(classes)[np.where(proba[:, col] >= threshold, col, 1 - col)]
    else:
        predicted = np.asarray(classes)[proba.argmax(axis=1)]
    block: dict = {
        "auc": _auc(y, proba, classes),
        "auc_kind": "roc_auc" if len(classes) == 2 else "macro one-vs-rest roc_auc",
        "accuracy": float(accuracy_score(y, predicted)),
        "balanced_accuracy": float(np.mean([np.mean(predicted[y == c] == c) for c in classes if np.any(y == c)])),
        "confusion_matrix": {
            "labels": classes,
            "rows": "true",
            "columns": "predicted",
            "matrix": confusion_matrix(y, predicted, labels=classes).tolist(),
        },
    }
    if positive is not None:
        col = classes.index(positive)
        y_pos = y == positive
        block["brier"] = float(brier_score_loss(y_pos, proba[:, col]))
        rule = "most probable class" if threshold is None else f"P({positive}) >= {threshold:.4f}"
        block["at_threshold"] = {"rule": rule, **evaluation.rates(y_pos, predicted == positive)}
        if with_calibration:
            block["calibration_bins"] = _calibration_bins(y_pos, proba[:, col])
            block["ece"] = evaluation.expected_calibration_error(y_pos, proba[:, col])
    else:
        onehot = (y[:, None] == np.asarray(classes)[None, :]).astype(float)
        block["brier_multiclass"] = float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))
    return block


def _subgroups(
    test_frame: pd.DataFrame, y: np.ndarray, proba: np.ndarray, classes: list[str], positive: str | None
) -> dict:
    y = np.asarray(y)
    groups: dict[str, dict] = {}
    if "sex" in test_frame.columns:
        sex = test_frame["sex"].astype("string").fillna("unknown").to_numpy()
        groups["sex"] = {str(s): np.asarray(sex == s) for s in sorted(set(sex.tolist()))}
    age = test_frame["age"].to_numpy(dtype=float)
    bands = {}
    for label, low, high in AGE_BANDS:
        mask = np.ones(len(age), dtype=bool)
        if low is not None:
            mask &= age >= low
        if high is not None:
            mask &= age < high
        bands[label] = mask
    groups["age_band"] = bands
    out: dict[str, dict] = {}
    for kind, masks in groups.items():
        out[kind] = {}
        for label, mask in masks.items():
            entry: dict = {"n": int(mask.sum()), "auc": _auc(y[mask], proba[mask], classes) if mask.any() else None}
            if positive is not None:
                entry["positives"] = int(np.sum(y[mask] == positive))
            else:
                entry["class_counts"] = {c: int(np.sum(y[mask] == c)) for c in classes}
            out[kind][label] = entry
    return out


def _winner(metrics: dict) -> str:
    model, baseline = metrics["model"]["auc"], metrics["baseline"]["auc"]
    if model is None or baseline is None:
        return "undetermined"
    if abs(model - baseline) < 0.005:
        return "tie"
    return "model" if model > baseline else "baseline"


def _jsonable(value):
    """Round floats for readability and turn numpy scalars into plain Python for JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if not np.isfinite(value) else round(value, 4)
    return value
