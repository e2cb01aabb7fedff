"""The tabular models' contract: input features, classes, and the loaded model's batch prediction.

``risk`` takes ``age`` (years), ``bmi`` (kg/m2), ``exercise_frequency`` (sessions per week) and
``smoking_history`` (cigarettes per day); ``treatment`` takes ``age``, ``blood_pressure`` (systolic,
mmHg), ``cholesterol`` (total, mg/dL), ``smoking_history`` and ``diabetes`` (0/1). See docs/models.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from medbatch.errors import InvalidInput

RISK_FEATURES = ("age", "bmi", "exercise_frequency", "smoking_history")
TREATMENT_FEATURES = ("age", "blood_pressure", "cholesterol", "smoking_history", "diabetes")
WORKLOAD_FEATURES = {"risk": RISK_FEATURES, "treatment": TREATMENT_FEATURES}
RISK_CLASSES = ["low", "high"]
"""Risk labels in probability-column order: column 0 is P(no outcome), column 1 is P(outcome)."""


@dataclass(frozen=True)
class TabularPredictions:
    """Predictions for a batch of rows, in input order.

    Attributes:
        labels: Predicted label per row. Risk: ``"high"`` when P(outcome) >= threshold, else ``"low"``.
            Treatment: the rarer plan class when its probability reaches the stored threshold (two
            classes), else the most probable plan class.
        scores: float64 per row. Risk: calibrated P(outcome) in [0, 1]. Treatment: probability of the
            predicted class.
        probabilities: ``(n_rows, n_classes)`` float64, rows sum to 1, columns in ``classes`` order.
        classes: Class names for the probability columns.
    """

    labels: list[str]
    scores: np.ndarray
    probabilities: np.ndarray
    classes: list[str]


@dataclass
class TabularModel:
    """A loaded, verified tabular model ready for batch prediction.

    Attributes:
        name: ``"risk"`` or ``"treatment"``.
        version: First 16 hex characters of the SHA-256 of the ``.skops`` artifact bytes.
        features: Input column names, in the order the estimator expects.
        classes: Class names for the probability columns.
        threshold: Risk only: probability at or above which the label is ``"high"``.
        estimator: The fitted scikit-learn Pipeline.
        metadata: The JSON metadata saved beside the artifact.
    """

    name: str
    version: str
    features: tuple[str, ...]
    classes: list[str]
    threshold: float | None
    estimator: object
    metadata: dict = field(default_factory=dict)

    def predict(self, frame: pd.DataFrame) -> TabularPredictions:
        """Predict every row of ``frame`` in one vectorised call.

        Args:
            frame: At least the model's ``features`` columns, as numbers in the units of the input
                contract; other columns are ignored.

        Returns:
            Labels, scores and class probabilities per row, in the frame's row order.

        Raises:
            InvalidInput: A feature column is missing, not numeric, or holds a missing value.
        """
        matrix = _feature_matrix(frame, self.features)
        if len(matrix) == 0:
            empty = np.empty((0, len(self.classes)), dtype=np.float64)
            return TabularPredictions([], np.empty(0, dtype=np.float64), empty, list(self.classes))
        probabilities = np.asarray(self.estimator.predict_proba(matrix), dtype=np.float64)
        labels, scores = labels_and_scores(
            self.name, probabilities, self.classes, self.threshold, self.metadata.get("positive_class")
        )
        return TabularPredictions(labels, scores, probabilities, list(self.classes))


def labels_and_scores(
    name: str, probabilities: np.ndarray, classes: list[str], threshold: float | None, positive: str | None
) -> tuple[list[str], np.ndarray]:
    """Labels and scores from class probabilities, the one rule training (drift reference) and prediction share.

    Risk: ``"high"`` when P(outcome) >= threshold, score P(outcome). Treatment: with two classes, a threshold
    and a ``positive`` class, that class when its probability is at or above the threshold, else the other;
    otherwise the most probable class; the score is the probability of the label.
    """
    if name == "risk":
        scores = probabilities[:, 1].copy()
        return _risk_labels(scores, float(threshold if threshold is not None else 0.5)), scores
    if threshold is not None and len(classes) == 2 and positive in classes:
        col = classes.index(positive)
        best = np.where(probabilities[:, col] >= threshold, col, 1 - col)
    else:
        best = probabilities.argmax(axis=1)
    scores = probabilities[np.arange(len(best)), best]
    return [classes[i] for i in best], scores


def _workload_features(workload: str) -> tuple[str, ...]:
    try:
        return WORKLOAD_FEATURES[workload]
    except KeyError:
        raise InvalidInput(f"unknown workload {workload!r}; expected one of {sorted(WORKLOAD_FEATURES)}") from None


def _feature_matrix(frame: pd.DataFrame, features: tuple[str, ...]) -> pd.DataFrame:
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise InvalidInput(f"missing feature column(s): {', '.join(missing)}; the model needs {', '.join(features)}")
    try:
        matrix = frame.loc[:, list(features)].astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"feature columns must be numeric: {exc}") from exc
    if matrix.isna().to_numpy().any():
        bad = [c for c in features if matrix[c].isna().any()]
        raise InvalidInput(f"missing values in feature column(s): {', '.join(bad)}")
    return matrix.reset_index(drop=True)


def _risk_labels(p: np.ndarray, threshold: float) -> list[str]:
    return np.where(p >= threshold, "high", "low").tolist()
