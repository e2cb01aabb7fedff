"""Saving and loading the tabular models: skops (never pickle), verified by SHA-256 before use.

A model is ``<name>.skops`` beside ``<name>.json`` (metadata) and ``<name>.card.md``; the JSON
``version`` is the first 16 hex characters of the SHA-256 of the ``.skops`` bytes, and loading
recomputes it and refuses an artifact that does not match, so a swapped or edited file is caught.
"""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import sklearn
import skops.io as sio
from sklearn.pipeline import Pipeline

from medbatch.errors import ModelMisconfigured
from medbatch.ml import evaluation
from medbatch.ml.artifacts import VERSION_CHARS, atomic_write, bytes_version, read_artifact
from medbatch.ml.tabular.contract import WORKLOAD_FEATURES, TabularModel
from medbatch.ml.tabular.training import TrainedModel

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
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
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


def artifact_version(path: Path) -> str:
    """Return the version of an artifact: the first 16 hex characters of the SHA-256 of its bytes.

    Raises:
        ModelMisconfigured: The file does not exist or cannot be read.
    """
    return bytes_version(read_artifact(Path(path)))


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
    version = bytes_version(data)
    metadata = {
        "name": trained.name,
        "version": version,
        "features": list(trained.features),
        "classes": list(trained.classes),
        "threshold": trained.threshold,
        "positive_class": trained.positive_class,
        "metrics": trained.metrics,
        "drift_reference": trained.reference or None,
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
    atomic_write(skops_path, data)
    atomic_write(directory / f"{trained.name}.json", (json.dumps(metadata, indent=2) + "\n").encode())
    atomic_write(directory / f"{trained.name}.card.md", card.encode())
    if trained.reliability:
        png = evaluation.reliability_png(trained.reliability, f"{trained.name}: reliability on the held-out split")
        atomic_write(directory / f"{trained.name}.reliability.png", png)
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
    data = read_artifact(path)
    meta_path = path.with_suffix(".json")
    try:
        metadata = json.loads(meta_path.read_text())
    except FileNotFoundError as exc:
        raise ModelMisconfigured(f"model metadata {meta_path} is missing") from exc
    except (OSError, ValueError) as exc:
        raise ModelMisconfigured(f"model metadata {meta_path} is unreadable: {exc}") from exc
    version = bytes_version(data)
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


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None
