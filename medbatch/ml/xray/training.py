"""Training the X-ray CNN: augmentation, class weights, early stopping, threshold and held-out metrics.

The threshold (Youden's J or fixed) and the metrics block come from :mod:`medbatch.ml.evaluation`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from medbatch import defaults
from medbatch.errors import InvalidInput
from medbatch.ml import drift, evaluation
from medbatch.ml.artifacts import tf_module
from medbatch.ml.evaluation import roc_png
from medbatch.ml.xray.data import (
    INPUT_FEATURES,
    MIN_SPLIT_PER_CLASS,
    _group_split,
    decode_many,
    find_layout,
    fingerprint,
    input_features,
)
from medbatch.ml.xray.model import ARTIFACT_FORMAT, CLASS_NAMES, XrayConfig, XrayModel, build_model


@dataclass
class TrainedXray:
    keras_model: Any
    meta: dict[str, Any]
    roc_png: bytes
    history: dict[str, list[float]]


def _augmenter(seed: int):
    import keras

    return keras.Sequential(
        [
            keras.layers.RandomRotation(0.03, fill_mode="constant", seed=seed),
            keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed + 1),
            keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
            keras.layers.RandomContrast(0.1, seed=seed + 3),
        ],
        name="augment",
    )


def _dataset(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool, augment, seed: int):
    tf = tf_module()
    ds = tf.data.Dataset.from_tensor_slices((x[..., None], y.astype(np.float32)))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment is not None:
        ds = ds.map(lambda a, b: (tf.clip_by_value(augment(a, training=True), 0.0, 1.0), b), num_parallel_calls=1)
    return ds.prefetch(tf.data.AUTOTUNE)


def choose_threshold(y_true: np.ndarray, scores: np.ndarray, strategy: str | float = "youden") -> float:
    """The decision threshold: a fixed float, or the point on the ROC curve that maximises Youden's J.

    Falls back to 0.5 when the validation data hold only one class; a Youden threshold is kept inside
    ``[1e-6, 1 - 1e-6]`` so the stored threshold is always a probability strictly between 0 and 1.
    """
    if not isinstance(strategy, str):
        return float(strategy)
    return float(np.clip(evaluation.youden_threshold(y_true, scores, single_class=0.5), 1e-6, 1 - 1e-6))


def evaluate(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUC, sensitivity, specificity, accuracy and the confusion matrix at ``threshold`` (rounded to 4 places)."""
    return evaluation.binary_metrics(y_true, scores, threshold)


def train_xray(
    data_dir: Path,
    *,
    config: XrayConfig = XrayConfig(),
    seed: int = 0,
    holdout_fraction: float = 0.15,
    threshold: str | float = "youden",
    threads: int = defaults.IMAGING_DECODE_THREADS,
    log: Callable[[str], None] = lambda _m: None,
    progress: Callable[[int, int, int, int], None] | None = None,
) -> TrainedXray:
    """Train the CNN on ``data_dir`` (see :func:`find_layout`) and evaluate it on held-out images.

    Splits: ``val/`` and ``test/`` are used when each holds at least ``MIN_SPLIT_PER_CLASS`` images per
    class; otherwise ``holdout_fraction`` of ``train`` is held out for each (whole patients at a time),
    and the metadata says so.

    ``progress(epoch, epochs, step, steps)`` is called after each training step (a bar on a terminal); ``log``
    gets a line per epoch, and a warning when a held-out split is too small for its figures to mean anything.

    Raises:
        InvalidInput: no usable layout, or too few readable images.
    """
    tf = tf_module()
    import keras

    data_dir = Path(data_dir)
    splits = find_layout(data_dir)
    notes: list[str] = []
    train = splits["train"]
    for name in ("test", "val"):
        found = splits.get(name)
        if found is not None and min(found.counts().values()) >= MIN_SPLIT_PER_CLASS:
            continue
        if found is not None:
            notes.append(f"{name}/ holds only {found.counts()}: held out {holdout_fraction:.0%} of train instead")
        else:
            notes.append(f"no {name}/ folder: held out {holdout_fraction:.0%} of train (whole patients)")
        train, splits[name] = _group_split(train, holdout_fraction, seed + (1 if name == "val" else 2))
    for n in notes:
        log(n)

    size = config.input_size
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rejected: list[tuple[Path, str]] = []
    train_shapes = np.zeros((0, 2))
    for name, split in (("train", train), ("val", splits["val"]), ("test", splits["test"])):
        log(f"decoding {name}: {len(split.paths)} images {split.counts()}")
        shapes = np.zeros((len(split.paths), 2))
        x, bad = decode_many(
            split.paths,
            size,
            threads=threads,
            progress=lambda d, t, n=name: log(f"  {n} {d}/{t}"),
            original_shapes=shapes,
        )
        keep = ~np.isnan(x).any(axis=(1, 2))
        arrays[name] = (x[keep], split.labels[keep])
        if name == "train":
            train_shapes = shapes[keep]
        rejected += bad
    if rejected:
        log(f"{len(rejected)} unreadable image(s) skipped, e.g. {rejected[0][0].name}: {rejected[0][1]}")
    x_train, y_train = arrays["train"]
    x_val, y_val = arrays["val"]
    x_test, y_test = arrays["test"]
    for name, y in (("train", y_train), ("val", y_val), ("test", y_test)):
        if len(np.unique(y)) < 2:
            raise InvalidInput(
                f"too few readable images: the {name} split lacks a class ({np.bincount(y, minlength=2)})"
            )

    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # noqa: BLE001 - older TensorFlow: training is seeded but not bit-exact
        pass
    model = build_model(config)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc"), "accuracy"],
    )
    counts = np.bincount(y_train, minlength=2)
    class_weight = {i: float(len(y_train) / (2 * counts[i])) for i in (0, 1)}
    train_ds = _dataset(
        x_train,
        y_train,
        config.batch_size,
        shuffle=True,
        augment=_augmenter(seed) if config.augment else None,
        seed=seed,
    )
    val_ds = _dataset(x_val, y_val, config.batch_size, shuffle=False, augment=None, seed=seed)
    log(f"training {config.epochs} epoch(s) on {len(y_train)} images, class weights {class_weight}")

    class _Log(keras.callbacks.Callback):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch + 1

        def on_train_batch_end(self, batch, logs=None):
            if progress is not None:
                progress(self.epoch, config.epochs, batch + 1, self.params.get("steps") or 0)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            log(f"  epoch {epoch + 1}: " + " ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items())))

    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        class_weight=class_weight,
        shuffle=False,  # train_ds shuffles itself; Keras's default True only warns that it ignores it
        verbose=0,
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_auc", mode="max", patience=config.patience, restore_best_weights=True
            ),
            _Log(),
        ],
    )
    trained = XrayModel(name="xray", version="unsaved", keras_model=model, meta={"input_size": size, "threshold": 0.5})
    val_scores = _predict_all(trained, x_val)
    chosen = choose_threshold(y_val, val_scores, threshold)
    test_scores = _predict_all(trained, x_test)
    for name, y in (("held-out test", y_test), ("validation", y_val)):
        warning = evaluation.small_sample_warning(len(y), int(np.sum(y == 1)), split=name)
        if warning:  # in the card and the command's output, beside the figures it qualifies
            notes.append(warning)
            log(warning)
    metrics = {
        "test": evaluate(y_test, test_scores, chosen),
        "validation": evaluate(y_val, val_scores, chosen),
        "threshold_strategy": threshold if isinstance(threshold, str) else "fixed",
        "n_train": int(len(y_train)),
        "train_counts": {CLASS_NAMES[i]: int(counts[i]) for i in (0, 1)},
        "epochs_run": len(history.history.get("loss", [])),
    }
    all_paths = train.paths + splits["val"].paths + splits["test"].paths
    meta = {
        "format": ARTIFACT_FORMAT,
        "name": "xray",
        "input_size": size,
        "channels": 1,
        "threshold": round(chosen, 6),
        "class_names": list(CLASS_NAMES),
        "positive_class": CLASS_NAMES[1],
        "architecture": asdict(config),
        "training_data": {
            "root": str(data_dir.resolve()),
            "fingerprint": fingerprint(all_paths, data_dir),
            "files": len(all_paths),
            "unreadable": len(rejected),
            "splits": {k: v.counts() for k, v in (("train", train), ("val", splits["val"]), ("test", splits["test"]))},
            "notes": notes,
        },
        "metrics": metrics,
        "drift_reference": drift_reference(x_train, train_shapes, test_scores),
        "seed": seed,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    png = roc_png(y_test, test_scores, chosen, f"X-ray CNN, held-out test (n={len(y_test)})")
    return TrainedXray(
        keras_model=model, meta=meta, roc_png=png, history={k: list(v) for k, v in history.history.items()}
    )


def drift_reference(x_train: np.ndarray, shapes: np.ndarray, test_scores: np.ndarray) -> dict[str, Any]:
    """The drift reference (``ml/drift``): per-image input features of the training split, held-out scores."""
    rows = [input_features(x, s) for x, s in zip(x_train, shapes, strict=True)]
    features = {f: np.array([r[f] for r in rows], dtype=np.float64) for f in INPUT_FEATURES}
    return drift.reference(features, test_scores)


def _predict_all(model: XrayModel, x: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([model.predict(x[i : i + batch]) for i in range(0, len(x), batch)]) if len(x) else np.zeros(0)
