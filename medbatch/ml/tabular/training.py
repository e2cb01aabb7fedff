"""Training the tabular models on a seeded, stratified held-out split.

``risk`` is a scaled logistic regression labelled ``"high"`` at or above a threshold chosen on the
training split (Youden's J, out of fold); ``treatment`` is a class-balanced random forest for any
number of plan classes. The held-out split is used only for the reported metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss
from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from medbatch.errors import InvalidInput
from medbatch.ml.evaluation import youden_threshold
from medbatch.ml.tabular.cards import risk_card, treatment_card
from medbatch.ml.tabular.contract import RISK_CLASSES, RISK_FEATURES, TREATMENT_FEATURES, _feature_matrix
from medbatch.ml.tabular.metrics import (
    _binary_block,
    _class_block,
    _cv_auc,
    _cv_auc_multi,
    _jsonable,
    _subgroups,
    _winner,
)

CV_FOLDS = 5
"""Folds for out-of-fold threshold choice and the training-split cross-validated AUC."""
CALIBRATION_GAIN_REQUIRED = 0.002
"""Brier-score improvement (absolute, out-of-fold on the training split) needed to add a calibrator."""
RF_N_ESTIMATORS = 200
RF_MAX_DEPTH = 6
RF_MIN_SAMPLES_LEAF = 0.01
"""Forest limits: depth 6 and leaves of at least 1% of the training rows keep the compressed artifact
well under 5 MB and stop the trees memorising the rare class. Picked by 5-fold CV AUC on the Framingham
training split (depth 8 / 5-row leaves: 0.816; depth 6 / ~1% leaves: 0.83); the held-out split was not used."""


@dataclass
class TrainedModel:
    """A freshly trained model with its held-out evaluation, not yet saved.

    Attributes:
        name: ``"risk"`` or ``"treatment"``.
        estimator: The fitted scikit-learn Pipeline (fitted on the training split only).
        features: Input column names, in the order the estimator expects.
        classes: Class names for the probability columns.
        threshold: Risk only: probability at or above which the label is ``"high"``.
        metrics: JSON-serialisable held-out metrics for the model and its baseline.
        card: Model card, markdown.
    """

    name: str
    estimator: object
    features: tuple[str, ...]
    classes: list[str]
    threshold: float | None
    metrics: dict
    card: str


def train_risk(frame: pd.DataFrame, *, seed: int = 0, test_size: float = 0.25) -> TrainedModel:
    """Train the risk model (scaled logistic regression) and evaluate it on a held-out split.

    The frame is split once, stratified on ``outcome`` and seeded. On the training split only:
    out-of-fold probabilities choose the ``"high"`` threshold (Youden's J) and decide whether a
    sigmoid calibrator lowers the Brier score enough to keep. The held-out split is used only for the
    reported metrics, which also cover a baseline logistic regression on age alone.

    Args:
        frame: ``RISK_FEATURES`` as floats in contract units, ``outcome`` as 0/1, optional ``sex``.
        seed: Seed for the split and the cross-validation folds.
        test_size: Held-out fraction, 0-1.

    Returns:
        The fitted model (on the training split), threshold, metrics and model card.

    Raises:
        InvalidInput: Missing columns, a non-binary outcome, or too few rows of a class to split.
    """
    y = _binary_outcome(frame)
    x = _feature_matrix(frame, RISK_FEATURES)
    x_train, x_test, y_train, y_test, train_idx, test_idx = _split(x, y, seed, test_size)
    folds = _folds(y_train, seed)

    plain = _risk_pipeline(seed)
    oof_plain = cross_val_predict(plain, x_train, y_train, cv=folds, method="predict_proba")[:, 1]
    calibrated = _risk_pipeline(seed, calibrated=True)
    oof_cal = cross_val_predict(calibrated, x_train, y_train, cv=folds, method="predict_proba")[:, 1]
    brier_plain = float(brier_score_loss(y_train, oof_plain))
    brier_cal = float(brier_score_loss(y_train, oof_cal))
    use_calibrator = brier_plain - brier_cal >= CALIBRATION_GAIN_REQUIRED
    estimator, oof = (calibrated, oof_cal) if use_calibrator else (plain, oof_plain)
    threshold = youden_threshold(y_train, oof)
    estimator.fit(x_train, y_train)

    baseline = _risk_pipeline(seed)
    oof_base = cross_val_predict(baseline, x_train[["age"]], y_train, cv=folds, method="predict_proba")[:, 1]
    base_threshold = youden_threshold(y_train, oof_base)
    baseline.fit(x_train[["age"]], y_train)

    p_test = estimator.predict_proba(x_test)
    p_base = baseline.predict_proba(x_test[["age"]])
    y_test_labels = np.where(y_test == 1, "high", "low")
    metrics = {
        "task": "binary",
        "positive_class": "outcome=1",
        "classes": RISK_CLASSES,
        "threshold": threshold,
        "threshold_rule": "Youden's J on out-of-fold probabilities of the training split",
        "calibration_choice": {
            "oof_brier_logistic": brier_plain,
            "oof_brier_sigmoid_calibrated": brier_cal,
            "gain_required": CALIBRATION_GAIN_REQUIRED,
            "used_calibrator": bool(use_calibrator),
        },
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "prevalence": {"train": float(y_train.mean()), "test": float(y_test.mean())},
        "cv_auc_train": _cv_auc(y_train, oof, folds),
        "model": _binary_block(y_test, p_test[:, 1], threshold, with_calibration=True),
        "baseline": {
            "description": "StandardScaler + LogisticRegression on age alone",
            "threshold": base_threshold,
            "cv_auc_train": _cv_auc(y_train, oof_base, folds),
            **_binary_block(y_test, p_base[:, 1], base_threshold, with_calibration=False),
        },
        "subgroups": _subgroups(frame.iloc[test_idx], y_test_labels, p_test, RISK_CLASSES, positive="high"),
    }
    metrics["winner_by_heldout_auc"] = _winner(metrics)
    card = risk_card(metrics)
    return TrainedModel("risk", estimator, RISK_FEATURES, list(RISK_CLASSES), threshold, _jsonable(metrics), card)


def train_treatment(frame: pd.DataFrame, *, seed: int = 0, test_size: float = 0.25) -> TrainedModel:
    """Train the treatment-plan model (class-balanced random forest) and evaluate it on a held-out split.

    Works for any number of plan classes (two or more). The frame is split once, stratified on
    ``outcome`` and seeded; the held-out split is used only for metrics, which also cover a baseline
    class-balanced logistic regression on the same features.

    Args:
        frame: ``TREATMENT_FEATURES`` as floats in contract units, ``outcome`` as plan-class names,
            optional ``sex``.
        seed: Seed for the split, the forest and the cross-validation folds.
        test_size: Held-out fraction, 0-1.

    Returns:
        The fitted model (on the training split), metrics and model card; ``threshold`` is None.

    Raises:
        InvalidInput: Missing columns, fewer than two classes, or too few rows of a class to split.
    """
    if "outcome" not in frame.columns:
        raise InvalidInput("training frame lacks the 'outcome' column")
    y = frame["outcome"].astype(str).to_numpy()
    classes = sorted(set(y.tolist()))
    if len(classes) < 2:
        raise InvalidInput(f"treatment training needs at least two plan classes, got {classes}")
    x = _feature_matrix(frame, TREATMENT_FEATURES)
    x_train, x_test, y_train, y_test, train_idx, test_idx = _split(x, y, seed, test_size)
    folds = _folds(y_train, seed)

    estimator = _treatment_pipeline(seed)
    oof = cross_val_predict(estimator, x_train, y_train, cv=folds, method="predict_proba")
    estimator.fit(x_train, y_train)
    classes = [str(c) for c in estimator.classes_]

    baseline = Pipeline(
        [("scale", StandardScaler()), ("logistic", LogisticRegression(class_weight="balanced", max_iter=2000))]
    )
    oof_base = cross_val_predict(baseline, x_train, y_train, cv=folds, method="predict_proba")
    baseline.fit(x_train, y_train)

    p_test = estimator.predict_proba(x_test)
    p_base = baseline.predict_proba(x_test)
    binary = len(classes) == 2
    # For two classes the "positive" class is the rarer one in training, so sensitivity means "found the rare plan".
    counts = pd.Series(y_train).value_counts()
    positive = str(counts.idxmin()) if binary else None
    metrics = {
        "task": "binary" if binary else "multiclass",
        "positive_class": positive,
        "classes": classes,
        "threshold": None,
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "prevalence": {
            "train": {c: float((y_train == c).mean()) for c in classes},
            "test": {c: float((y_test == c).mean()) for c in classes},
        },
        "cv_auc_train": _cv_auc_multi(y_train, oof, classes, folds),
        "model": _class_block(y_test, p_test, classes, positive, with_calibration=True),
        "baseline": {
            "description": "StandardScaler + LogisticRegression(class_weight='balanced') on the same features",
            "cv_auc_train": _cv_auc_multi(y_train, oof_base, classes, folds),
            **_class_block(y_test, p_base, classes, positive, with_calibration=False),
        },
        "subgroups": _subgroups(frame.iloc[test_idx], y_test, p_test, classes, positive=positive),
    }
    metrics["winner_by_heldout_auc"] = _winner(metrics)
    card = treatment_card(
        metrics, n_estimators=RF_N_ESTIMATORS, max_depth=RF_MAX_DEPTH, min_samples_leaf=RF_MIN_SAMPLES_LEAF
    )
    return TrainedModel("treatment", estimator, TREATMENT_FEATURES, classes, None, _jsonable(metrics), card)


def _risk_pipeline(seed: int, *, calibrated: bool = False) -> Pipeline:
    logistic = LogisticRegression(max_iter=2000, random_state=seed)
    if calibrated:
        from sklearn.calibration import CalibratedClassifierCV

        return Pipeline(
            [("scale", StandardScaler()), ("calibrated", CalibratedClassifierCV(logistic, method="sigmoid", cv=5))]
        )
    return Pipeline([("scale", StandardScaler()), ("logistic", logistic)])


def _treatment_pipeline(seed: int) -> Pipeline:
    forest = RandomForestClassifier(
        n_estimators=RF_N_ESTIMATORS,
        max_depth=RF_MAX_DEPTH,
        min_samples_leaf=RF_MIN_SAMPLES_LEAF,
        class_weight="balanced",
        random_state=seed,
        n_jobs=1,
    )
    return Pipeline([("forest", forest)])


def _binary_outcome(frame: pd.DataFrame) -> np.ndarray:
    if "outcome" not in frame.columns:
        raise InvalidInput("training frame lacks the 'outcome' column")
    values = pd.to_numeric(frame["outcome"], errors="coerce")
    if values.isna().any() or not set(values.unique()).issubset({0, 1}):
        raise InvalidInput("risk outcome must be 0/1 (1 = the outcome happened)")
    y = values.astype(int).to_numpy()
    if len(set(y.tolist())) < 2:
        raise InvalidInput("risk outcome has a single class; need both 0 and 1")
    return y


def _split(x: pd.DataFrame, y: np.ndarray, seed: int, test_size: float):
    index = np.arange(len(y))
    try:
        train_idx, test_idx = train_test_split(index, test_size=test_size, stratify=y, random_state=seed)
    except ValueError as exc:
        raise InvalidInput(f"cannot make a stratified held-out split: {exc}") from exc
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return (
        x.iloc[train_idx].reset_index(drop=True),
        x.iloc[test_idx].reset_index(drop=True),
        y[train_idx],
        y[test_idx],
        train_idx,
        test_idx,
    )


def _folds(y_train: np.ndarray, seed: int) -> StratifiedKFold:
    smallest = int(pd.Series(y_train).value_counts().min())
    if smallest < 2:
        raise InvalidInput("each class needs at least two training rows for cross-validation")
    return StratifiedKFold(n_splits=min(CV_FOLDS, smallest), shuffle=True, random_state=seed)
