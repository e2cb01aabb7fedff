"""Training the tabular models: candidates, a champion by cross-validated AUC, a calibrator, one held-out look.

Both workloads fit the same candidates on the training split: the article's model (LogisticRegression for
``risk``, a class-balanced RandomForest for ``treatment``), plus LogisticRegression, RandomForest and
HistGradientBoosting. The **champion** is the candidate with the best cross-validated AUC on the training
split only; it is then calibrated (CalibratedClassifierCV, sigmoid or isotonic, whichever gives the lower
cross-validated Brier score). The held-out split is looked at once, after every choice is made, for the card.
``model=NAME`` forces one candidate (still calibrated). A binary model labels its positive class at or above a
threshold chosen on the training split (Youden's J on out-of-fold calibrated probabilities).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from medbatch import defaults
from medbatch.errors import InvalidInput
from medbatch.ml import drift, evaluation
from medbatch.ml.evaluation import youden_threshold
from medbatch.ml.tabular.cards import risk_card, treatment_card
from medbatch.ml.tabular.contract import (
    RISK_CLASSES,
    RISK_FEATURES,
    TREATMENT_FEATURES,
    _feature_matrix,
    labels_and_scores,
)
from medbatch.ml.tabular.metrics import (
    CALIBRATION_MIN_ROWS_PER_BIN,
    _auc,
    _binary_block,
    _class_block,
    _cv_auc,
    _cv_auc_multi,
    _jsonable,
    _subgroups,
    _winner,
)

CV_FOLDS = defaults.MODEL_CV_FOLDS
"""Folds for the champion's cross-validated AUC, the calibrator's cross-validated Brier and the threshold."""
CANDIDATES = ("logistic_regression", "random_forest", "hist_gradient_boosting")
"""Every candidate a tabular training run fits (``model=`` forces one of them)."""
ARTICLE_MODEL = {"risk": "logistic_regression", "treatment": "random_forest"}
"""The article's model per workload: always a candidate, preferred only on an exact CV tie."""
CALIBRATION_METHODS = ("sigmoid", "isotonic")
RF_N_ESTIMATORS = 200
RF_MAX_DEPTH = 6
RF_MIN_SAMPLES_LEAF = 0.01
"""Forest limits: depth 6 and leaves of at least 1% of the training rows keep the compressed artifact
well under 5 MB and stop the trees memorising the rare class. Picked by 5-fold CV AUC on the Framingham
training split (depth 8 / 5-row leaves: 0.816; depth 6 / ~1% leaves: 0.83); the held-out split was not used."""
HGB_PARAMS = {"max_iter": 150, "learning_rate": 0.05, "max_depth": 3, "min_samples_leaf": 20, "l2_regularization": 1.0}
"""Small, regularised boosting: a few thousand rows overfit the scikit-learn defaults."""


@dataclass
class TrainedModel:
    """A freshly trained model with its held-out evaluation, not yet saved.

    Attributes:
        name: ``"risk"`` or ``"treatment"``.
        estimator: The fitted, calibrated scikit-learn Pipeline (fitted on the training split only).
        features: Input column names, in the order the estimator expects.
        classes: Class names for the probability columns.
        threshold: Binary models: probability of ``positive_class`` at or above which it is the label.
        metrics: JSON-serialisable held-out metrics: the shipped (calibrated champion) model, every
            candidate, the baseline, subgroups, and how the champion was chosen (``governance``).
        card: Model card, markdown.
        positive_class: Binary models: the class the threshold is for (risk ``"high"``).
        reference: Drift reference (training-split feature bins, held-out score bins), see ``ml/drift``.
        reliability: Held-out calibration-bin tables per curve, for the card's reliability plot.
    """

    name: str
    estimator: object
    features: tuple[str, ...]
    classes: list[str]
    threshold: float | None
    metrics: dict
    card: str
    positive_class: str | None = None
    reference: dict = field(default_factory=dict)
    reliability: dict = field(default_factory=dict)


def candidate_pipeline(name: str, workload: str, seed: int) -> Pipeline:
    """An unfitted candidate. The article's treatment forest is class-balanced; the others are unweighted."""
    if name == "logistic_regression":
        return Pipeline(
            [("scale", StandardScaler()), ("logistic", LogisticRegression(max_iter=2000, random_state=seed))]
        )
    if name == "random_forest":
        forest = RandomForestClassifier(
            n_estimators=RF_N_ESTIMATORS,
            max_depth=RF_MAX_DEPTH,
            min_samples_leaf=RF_MIN_SAMPLES_LEAF,
            class_weight="balanced" if ARTICLE_MODEL[workload] == "random_forest" else None,
            random_state=seed,
            n_jobs=1,
        )
        return Pipeline([("forest", forest)])
    if name == "hist_gradient_boosting":
        return Pipeline([("boosting", HistGradientBoostingClassifier(random_state=seed, **HGB_PARAMS))])
    raise InvalidInput(f"unknown model {name!r}; choose one of {', '.join(CANDIDATES)}")


def _names(model: str | None, candidates: tuple[str, ...] | None) -> tuple[str, ...]:
    names = (model,) if model else tuple(candidates or CANDIDATES)
    for n in names:
        if n not in CANDIDATES:
            raise InvalidInput(f"unknown model {n!r}; choose one of {', '.join(CANDIDATES)}")
    return names


def _brier(y: np.ndarray, proba: np.ndarray, labels: list) -> float:
    onehot = (np.asarray(y)[:, None] == np.asarray(labels, dtype=object)[None, :]).astype(float)
    if len(labels) == 2:
        return float(np.mean((proba[:, 1] - onehot[:, 1]) ** 2))
    return float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))


def _ece(y: np.ndarray, proba: np.ndarray, labels: list, positive_col: int | None) -> float | None:
    """ECE of the positive column (binary), or of the top-class confidence (multiclass)."""
    y = np.asarray(y)
    if positive_col is not None:
        return evaluation.expected_calibration_error(y == labels[positive_col], proba[:, positive_col])
    top = proba.argmax(axis=1)
    return evaluation.expected_calibration_error(np.asarray(labels, dtype=object)[top] == y, proba.max(axis=1))


def _calibrated(base: Pipeline, method: str, n_splits: int) -> Pipeline:
    # cv as a number (stratified, unshuffled folds): the saved artifact holds no splitter object.
    return Pipeline([("calibrated", CalibratedClassifierCV(base, method=method, cv=n_splits, ensemble=False))])


def _choose(workload: str, x_train, y_train, labels: list, folds, seed: int, names: tuple[str, ...]) -> dict:
    """Out-of-fold probabilities of every candidate; the champion by CV AUC; its calibrator by CV Brier."""
    cv = {}
    for name in names:
        est = candidate_pipeline(name, workload, seed)
        oof = cross_val_predict(est, x_train, y_train, cv=folds, method="predict_proba")
        cv[name] = {"oof": oof, "cv_auc": _cv_auc_multi(y_train, oof, labels, folds)}
    champion = max(names, key=lambda n: (cv[n]["cv_auc"]["mean"], n == ARTICLE_MODEL[workload]))
    briers = {"uncalibrated": _brier(y_train, cv[champion]["oof"], labels)}
    oof_cal = {}
    for method in CALIBRATION_METHODS:
        est = _calibrated(candidate_pipeline(champion, workload, seed), method, folds.n_splits)
        oof_cal[method] = cross_val_predict(est, x_train, y_train, cv=folds, method="predict_proba")
        briers[method] = _brier(y_train, oof_cal[method], labels)
    method = min(CALIBRATION_METHODS, key=lambda m: briers[m])
    return {"cv": cv, "champion": champion, "method": method, "briers": briers, "oof": oof_cal[method]}


def _candidates(workload, choice, x_train, y_train, x_test, y_test, labels, positive_col, test_frame, seed):
    """Each candidate (uncalibrated) fitted on the training split and measured once on the held-out split."""
    blocks, curves = {}, {}
    for name, entry in choice["cv"].items():
        p = candidate_pipeline(name, workload, seed).fit(x_train, y_train).predict_proba(x_test)
        subgroups = _subgroups(test_frame, np.asarray(y_test), p, labels, positive=None)
        blocks[name] = {
            "article_model": name == ARTICLE_MODEL[workload],
            "cv_auc_train": entry["cv_auc"],
            "heldout_auc": _auc(y_test, p, labels),
            "heldout_brier": _brier(y_test, p, labels),
            "heldout_ece": _ece(y_test, p, labels, positive_col),
            "subgroup_auc": {kind: {k: g["auc"] for k, g in groups.items()} for kind, groups in subgroups.items()},
        }
        if positive_col is not None:
            y_pos = np.asarray(y_test) == labels[positive_col]
            curves[f"{name} (uncalibrated)"] = evaluation.calibration_bins(
                y_pos, p[:, positive_col], min_rows_per_bin=CALIBRATION_MIN_ROWS_PER_BIN
            )
    return blocks, curves


def _governance(choice: dict, candidates: dict, forced: str | None) -> dict:
    champion = choice["champion"]
    ranked = sorted(candidates, key=lambda n: -candidates[n]["cv_auc_train"]["mean"])
    runner_up = next((n for n in ranked if n != champion), None)
    margin = None
    if runner_up is not None:
        margin = candidates[champion]["cv_auc_train"]["mean"] - candidates[runner_up]["cv_auc_train"]["mean"]
    return {
        "champion": champion,
        "forced": forced is not None,
        "rule": "best cross-validated AUC on the training split; the held-out split is looked at once, for the card",
        "runner_up": runner_up,
        "cv_auc_margin": margin,
        "calibration": {"method": choice["method"], "cv_brier": choice["briers"]},
        "best_candidate_heldout_auc": max((c["heldout_auc"] or 0.0) for c in candidates.values()),
    }


def _reference(name, x_train, p_test, classes, threshold, positive) -> dict:
    _, scores = labels_and_scores(name, p_test, classes, threshold, positive)
    return drift.reference({c: x_train[c].to_numpy() for c in x_train.columns}, scores)


def train_risk(
    frame: pd.DataFrame,
    *,
    seed: int = 0,
    test_size: float = 0.25,
    cv_folds: int = CV_FOLDS,
    model: str | None = None,
    candidates: tuple[str, ...] | None = None,
) -> TrainedModel:
    """Train the risk model: candidates, champion by CV AUC, calibrated, evaluated once on a held-out split.

    The frame is split once, stratified on ``outcome`` and seeded. On the training split only: every
    candidate's cross-validated AUC picks the champion, the cross-validated Brier score picks its calibrator
    (sigmoid or isotonic), and out-of-fold calibrated probabilities choose the ``"high"`` threshold (Youden's
    J). The held-out split is used only for the reported metrics, which also cover every candidate and a
    baseline logistic regression on age alone.

    Args:
        frame: ``RISK_FEATURES`` as floats in contract units, ``outcome`` as 0/1, optional ``sex``.
        seed: Seed for the split, the folds and the models.
        test_size: Held-out fraction, 0-1.
        cv_folds: Cross-validation folds (fewer is faster; tests use 3).
        model: Force this candidate (one of :data:`CANDIDATES`) instead of choosing.
        candidates: Candidates to choose from (default all of :data:`CANDIDATES`).

    Returns:
        The fitted model (on the training split), threshold, metrics, model card and drift reference.

    Raises:
        InvalidInput: Missing columns, a non-binary outcome, too few rows of a class, an unknown model.
    """
    names = _names(model, candidates)
    y = _binary_outcome(frame)
    x = _feature_matrix(frame, RISK_FEATURES)
    x_train, x_test, y_train, y_test, train_idx, test_idx = _split(x, y, seed, test_size)
    folds = _folds(y_train, seed, cv_folds)
    labels = [0, 1]

    choice = _choose("risk", x_train, y_train, labels, folds, seed, names)
    threshold = youden_threshold(y_train, choice["oof"][:, 1])
    champion = candidate_pipeline(choice["champion"], "risk", seed)
    estimator = _calibrated(champion, choice["method"], folds.n_splits).fit(x_train, y_train)

    baseline = candidate_pipeline("logistic_regression", "risk", seed)
    oof_base = cross_val_predict(baseline, x_train[["age"]], y_train, cv=folds, method="predict_proba")[:, 1]
    base_threshold = youden_threshold(y_train, oof_base)
    baseline.fit(x_train[["age"]], y_train)

    p_test = estimator.predict_proba(x_test)
    p_base = baseline.predict_proba(x_test[["age"]])
    test_frame = frame.iloc[test_idx]
    cands, curves = _candidates("risk", choice, x_train, y_train, x_test, y_test, labels, 1, test_frame, seed)
    y_test_labels = np.where(y_test == 1, "high", "low")
    metrics = {
        "task": "binary",
        "positive_class": "outcome=1",
        "classes": RISK_CLASSES,
        "threshold": threshold,
        "threshold_rule": "Youden's J on out-of-fold calibrated probabilities of the training split",
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "prevalence": {"train": float(y_train.mean()), "test": float(y_test.mean())},
        "cv_auc_train": _cv_auc(y_train, choice["oof"][:, 1], folds),
        "model": _binary_block(y_test, p_test[:, 1], threshold, with_calibration=True),
        "candidates": cands,
        "governance": _governance(choice, cands, model),
        "baseline": {
            "description": "StandardScaler + LogisticRegression on age alone",
            "threshold": base_threshold,
            "cv_auc_train": _cv_auc(y_train, oof_base, folds),
            **_binary_block(y_test, p_base[:, 1], base_threshold, with_calibration=False),
        },
        "subgroups": _subgroups(test_frame, y_test_labels, p_test, RISK_CLASSES, positive="high"),
    }
    metrics["winner_by_heldout_auc"] = _winner(metrics)
    metrics = _jsonable(metrics)
    curves[f"shipped: {choice['champion']} + {choice['method']}"] = metrics["model"]["calibration_bins"]
    return TrainedModel(
        "risk",
        estimator,
        RISK_FEATURES,
        list(RISK_CLASSES),
        threshold,
        metrics,
        risk_card(metrics),
        positive_class="high",
        reference=_reference("risk", x_train, p_test, list(RISK_CLASSES), threshold, "high"),
        reliability=curves,
    )


def train_treatment(
    frame: pd.DataFrame,
    *,
    seed: int = 0,
    test_size: float = 0.25,
    cv_folds: int = CV_FOLDS,
    model: str | None = None,
    candidates: tuple[str, ...] | None = None,
) -> TrainedModel:
    """Train the treatment-plan model: candidates, champion by CV AUC, calibrated, evaluated once held out.

    Works for any number of plan classes (two or more). The frame is split once, stratified on ``outcome``
    and seeded; choices are made on the training split as in :func:`train_risk`. With two classes the rarer
    one is the positive class, labelled at or above a Youden threshold on out-of-fold calibrated
    probabilities; with more, the label is the most probable class. The held-out metrics also cover every
    candidate and a class-balanced logistic-regression baseline.

    Args:
        frame: ``TREATMENT_FEATURES`` as floats in contract units, ``outcome`` as plan-class names,
            optional ``sex``.
        seed, test_size, cv_folds, model, candidates: As for :func:`train_risk`.

    Returns:
        The fitted model (on the training split), metrics, model card and drift reference.

    Raises:
        InvalidInput: Missing columns, fewer than two classes, too few rows of a class, an unknown model.
    """
    names = _names(model, candidates)
    if "outcome" not in frame.columns:
        raise InvalidInput("training frame lacks the 'outcome' column")
    y = frame["outcome"].astype(str).to_numpy()
    classes = sorted(set(y.tolist()))
    if len(classes) < 2:
        raise InvalidInput(f"treatment training needs at least two plan classes, got {classes}")
    x = _feature_matrix(frame, TREATMENT_FEATURES)
    x_train, x_test, y_train, y_test, train_idx, test_idx = _split(x, y, seed, test_size)
    folds = _folds(y_train, seed, cv_folds)
    binary = len(classes) == 2
    # For two classes the "positive" class is the rarer one in training, so sensitivity means "found the rare plan".
    positive = str(pd.Series(y_train).value_counts().idxmin()) if binary else None
    positive_col = classes.index(positive) if binary else None

    choice = _choose("treatment", x_train, y_train, classes, folds, seed, names)
    threshold = youden_threshold(y_train == positive, choice["oof"][:, positive_col]) if binary else None
    champion = candidate_pipeline(choice["champion"], "treatment", seed)
    estimator = _calibrated(champion, choice["method"], folds.n_splits).fit(x_train, y_train)
    classes = [str(c) for c in estimator.classes_]

    baseline = Pipeline(
        [("scale", StandardScaler()), ("logistic", LogisticRegression(class_weight="balanced", max_iter=2000))]
    )
    oof_base = cross_val_predict(baseline, x_train, y_train, cv=folds, method="predict_proba")
    baseline.fit(x_train, y_train)

    p_test = estimator.predict_proba(x_test)
    p_base = baseline.predict_proba(x_test)
    test_frame = frame.iloc[test_idx]
    cands, curves = _candidates(
        "treatment", choice, x_train, y_train, x_test, y_test, classes, positive_col, test_frame, seed
    )
    metrics = {
        "task": "binary" if binary else "multiclass",
        "positive_class": positive,
        "classes": classes,
        "threshold": threshold,
        "threshold_rule": (
            f"P({positive}) >= threshold, Youden's J on out-of-fold calibrated probabilities of the training split"
            if binary
            else "most probable class"
        ),
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "prevalence": {
            "train": {c: float((y_train == c).mean()) for c in classes},
            "test": {c: float((y_test == c).mean()) for c in classes},
        },
        "cv_auc_train": _cv_auc_multi(y_train, choice["oof"], classes, folds),
        "model": _class_block(y_test, p_test, classes, positive, with_calibration=True, threshold=threshold),
        "candidates": cands,
        "governance": _governance(choice, cands, model),
        "baseline": {
            "description": "StandardScaler + LogisticRegression(class_weight='balanced') on the same features",
            "cv_auc_train": _cv_auc_multi(y_train, oof_base, classes, folds),
            **_class_block(y_test, p_base, classes, positive, with_calibration=False),
        },
        "subgroups": _subgroups(test_frame, y_test, p_test, classes, positive=positive),
    }
    if not binary:
        metrics["model"]["ece"] = _ece(y_test, p_test, classes, None)
    metrics["winner_by_heldout_auc"] = _winner(metrics)
    metrics = _jsonable(metrics)
    if binary:
        curves[f"shipped: {choice['champion']} + {choice['method']}"] = metrics["model"]["calibration_bins"]
    card = treatment_card(
        metrics, n_estimators=RF_N_ESTIMATORS, max_depth=RF_MAX_DEPTH, min_samples_leaf=RF_MIN_SAMPLES_LEAF
    )
    return TrainedModel(
        "treatment",
        estimator,
        TREATMENT_FEATURES,
        classes,
        threshold,
        metrics,
        card,
        positive_class=positive,
        reference=_reference("treatment", x_train, p_test, classes, threshold, positive),
        reliability=curves if binary else {},
    )


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


def _folds(y_train: np.ndarray, seed: int, cv_folds: int = CV_FOLDS) -> StratifiedKFold:
    smallest = int(pd.Series(y_train).value_counts().min())
    if smallest < 2 or cv_folds < 2:
        raise InvalidInput("each class needs at least two training rows, and cv_folds at least 2, for cross-validation")
    return StratifiedKFold(n_splits=min(cv_folds, smallest), shuffle=True, random_state=seed)
