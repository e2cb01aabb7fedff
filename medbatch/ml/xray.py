"""Chest X-ray pneumonia classifier: the article's Keras CNN, trained on the usual folder layout.

The default architecture is the source article's: three Conv2D + MaxPool blocks (32, 64, 128
filters), a 512-unit dense layer and a sigmoid output, on a 150 x 150 grayscale input. Everything
is configurable through :class:`XrayConfig`.

Pixels come from :mod:`medbatch.ml.images` for training and serving alike (PNG, JPEG or DICOM, air
dark, [0, 1]), so what the model learned on is what it sees at night.

Training reads ``train/NORMAL`` and ``train/PNEUMONIA`` (plus ``val/`` and ``test/`` when they are big
enough), augments with Keras preprocessing layers inside a ``tf.data`` pipeline, weights the classes
against the imbalance, stops early on validation AUC, picks the decision threshold on validation data
(Youden's J, or a fixed value) and reports AUC, sensitivity, specificity and the confusion matrix on
held-out test images, with a ROC curve PNG.

The artifact is one zip file (``model.keras`` + ``meta.json``), so the registry's SHA-256 version covers
the weights, the threshold and the class names together. It is loaded with ``safe_mode=True``.

TensorFlow is imported inside functions only: importing this module costs nothing, and a Celery
parent process never loads TensorFlow before it forks its children.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from medbatch import defaults
from medbatch.errors import InvalidInput, ModelMisconfigured
from medbatch.ml import images

ARTIFACT_NAME = "model.xray.zip"
ARTIFACT_FORMAT = "medbatch-xray-1"
CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # folder names; index 1 is the positive class
LABELS = {"NORMAL": "normal", "PNEUMONIA": "pneumonia"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
#: A val/ or test/ folder smaller than this per class is too small to trust (the Kaggle set's val/ has 8).
MIN_SPLIT_PER_CLASS = 25
LAST_CONV = "last_conv"

_tf_lock = threading.Lock()
_tf_ready = False


def tf_module():
    """Import TensorFlow once per process, with GPU memory growth on (so one process per GPU can share it).

    Memory growth must be set before the first GPU operation; this is the only place TensorFlow is imported.
    """
    global _tf_ready
    import tensorflow as tf

    with _tf_lock:
        if not _tf_ready:
            for gpu in tf.config.list_physical_devices("GPU"):
                try:
                    tf.config.experimental.set_memory_growth(gpu, True)
                except RuntimeError:  # already initialised by someone else: nothing to do
                    pass
            _tf_ready = True
    return tf


# --------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class XrayConfig:
    """The CNN's shape and training knobs. Defaults are the source article's architecture."""

    input_size: int = 150
    filters: tuple[int, ...] = (32, 64, 128)
    dense_units: int = 512
    dropout: float = 0.5
    learning_rate: float = 1e-3
    batch_size: int = 32
    epochs: int = 10
    patience: int = 3
    augment: bool = True


def build_model(config: XrayConfig):
    """The Keras CNN: ``len(filters)`` Conv2D(3x3, ReLU) + MaxPool blocks, dense, dropout, sigmoid.

    Input: ``(input_size, input_size, 1)`` float32 in [0, 1]. Output: P(pneumonia), shape ``(n, 1)``.
    The last convolution is named ``last_conv`` for Grad-CAM.
    """
    tf_module()
    import keras

    inputs = keras.Input((config.input_size, config.input_size, 1), name="xray")
    x = inputs
    for i, n in enumerate(config.filters):
        name = LAST_CONV if i == len(config.filters) - 1 else f"conv_{i + 1}"
        x = keras.layers.Conv2D(n, 3, activation="relu", name=name)(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool_{i + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(config.dense_units, activation="relu", name="dense")(x)
    if config.dropout:
        x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="pneumonia")(x)
    return keras.Model(inputs, outputs, name="xray_cnn")


# --------------------------------------------------------------------------- the loaded model


@dataclass
class XrayModel:
    """A loaded classifier: the model contract (name, version, input, batch prediction) plus Grad-CAM."""

    name: str
    version: str
    keras_model: Any
    meta: dict[str, Any]
    _infer: Any = field(default=None, repr=False)
    _grad_model: Any = field(default=None, repr=False)

    @property
    def input_size(self) -> int:
        return int(self.meta["input_size"])

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def positive_label(self) -> str:
        return LABELS.get(self.meta["class_names"][1], self.meta["class_names"][1].lower())

    @property
    def negative_label(self) -> str:
        return LABELS.get(self.meta["class_names"][0], self.meta["class_names"][0].lower())

    def _compiled(self):
        if self._infer is None:
            tf = tf_module()
            model = self.keras_model
            size = self.input_size
            self._infer = tf.function(
                lambda x: model(x, training=False),
                input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32)],
            )
        return self._infer

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """P(pneumonia) for a batch of ``(n, size, size)`` or ``(n, size, size, 1)`` arrays in [0, 1].

        One compiled call per batch (``tf.function`` around ``model(x, training=False)``): much faster
        than ``model.predict`` for the small batches a worker sees.
        """
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim == 3:
            x = x[..., None]
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self._compiled()(x)).reshape(-1).astype(np.float32)

    def gradcam(self, batch: np.ndarray) -> np.ndarray:
        """Grad-CAM heatmaps for the positive class: ``(n, size, size)`` float32 in [0, 1].

        The gradient of P(pneumonia) with respect to the last convolution's feature maps, averaged
        per channel, weights those maps; the ReLU of the sum, upsampled to the input, is the heatmap.
        """
        tf = tf_module()
        import keras

        x = np.asarray(batch, dtype=np.float32)
        if x.ndim == 3:
            x = x[..., None]
        if self._grad_model is None:
            m = self.keras_model
            self._grad_model = keras.Model(m.inputs, [m.get_layer(LAST_CONV).output, m.output])
        xt = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            conv, pred = self._grad_model(xt, training=False)
            score = tf.reduce_sum(pred[:, 0])
        grads = tape.gradient(score, conv)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1))[..., None]
        cam = tf.image.resize(cam, (x.shape[1], x.shape[2]), method="bilinear")[..., 0].numpy()
        peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
        return np.where(peak > 0, cam / np.maximum(peak, 1e-12), 0.0).astype(np.float32)


def load_model(path: Path) -> XrayModel:
    """Load an artifact written by :func:`save_model` (Keras ``safe_mode=True``: no code runs from it).

    Raises:
        ModelMisconfigured: not a medbatch X-ray artifact, or unreadable.
    """
    path = Path(path)
    tf_module()
    import keras

    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if names != {"model.keras", "meta.json"}:
                raise ModelMisconfigured(f"{path} is not a medbatch X-ray artifact (holds {sorted(names)})")
            meta = json.loads(zf.read("meta.json"))
            if meta.get("format") != ARTIFACT_FORMAT:
                raise ModelMisconfigured(f"{path}: unknown artifact format {meta.get('format')!r}")
            with tempfile.TemporaryDirectory(prefix="medbatch-xray-") as tmp:
                target = Path(tmp) / "model.keras"
                target.write_bytes(zf.read("model.keras"))
                model = keras.saving.load_model(target, compile=False, safe_mode=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ModelMisconfigured(f"{path}: cannot load X-ray model: {type(exc).__name__}: {exc}") from None
    from medbatch.ml.registry import file_version

    return XrayModel(name=meta.get("name", "xray"), version=file_version(path), keras_model=model, meta=meta)


def save_model(keras_model, meta: dict[str, Any], directory: Path) -> Path:
    """Write the artifact (zip of ``model.keras`` + ``meta.json``) into ``directory``; returns its path.

    The zip entries carry a fixed timestamp, so the same weights and metadata give the same bytes.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medbatch-xray-") as tmp:
        keras_path = Path(tmp) / "model.keras"
        keras_model.save(keras_path)
        path = directory / ARTIFACT_NAME
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in (("model.keras", keras_path.read_bytes()), ("meta.json", _json_bytes(meta))):
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                zf.writestr(info, data)
    return path


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


# --------------------------------------------------------------------------- findings


def attention_region(heatmap: np.ndarray) -> str:
    """Where a Grad-CAM heatmap concentrates, in image coordinates: e.g. ``lower zone, image left``.

    Image left/right, not patient left/right: the view (PA/AP) decides which side is which.
    """
    h, w = heatmap.shape
    total = float(heatmap.sum())
    if total <= 0:
        return "no focal area"
    ys, xs = np.mgrid[0:h, 0:w]
    cy, cx = float((heatmap * ys).sum() / total) / h, float((heatmap * xs).sum() / total) / w
    zone = "upper" if cy < 1 / 3 else "middle" if cy < 2 / 3 else "lower"
    side = "image left" if cx < 0.45 else "image right" if cx > 0.55 else "central"
    return f"{zone} zone, {side}"


def draft_findings(
    probability: float, threshold: float, heatmap: np.ndarray | None, model: str, flags: Sequence[str]
) -> str:
    """A short draft findings text for a positive result, written to be checked by a clinician."""
    lines = [
        "DRAFT - AI-generated, requires clinician review; not a diagnosis.",
        f"Model {model} estimates the probability of pneumonia at {probability:.2f} "
        f"(threshold {threshold:.2f}): findings suggestive of pneumonia.",
    ]
    if heatmap is not None:
        lines.append(f"Model attention (Grad-CAM) is greatest at: {attention_region(heatmap)} (image coordinates).")
    if flags:
        lines.append("Input notes: " + "; ".join(flags) + ".")
    lines.append("Correlate with the clinical picture and the radiologist's read.")
    return " ".join(lines)


def overlay_png(pixels: np.ndarray, heatmap: np.ndarray, path: Path, *, max_side: int = 512, caption: str = "") -> Path:
    """Save the radiograph with the Grad-CAM heatmap blended over it (jet colours, 40 %) as a PNG.

    Written to a temporary name and renamed, so a reader never sees half a file and a re-run replaces
    the same path with the same bytes.
    """
    from PIL import Image, ImageDraw

    h, w = pixels.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    base = Image.fromarray(np.clip(pixels * 255, 0, 255).astype(np.uint8), mode="L").resize(
        size, Image.Resampling.BILINEAR
    )
    heat = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    colours = _jet(np.clip(np.asarray(heat), 0, 1))
    rgb = np.repeat(np.asarray(base)[..., None], 3, axis=-1).astype(np.float32)
    alpha = 0.4 * np.clip(np.asarray(heat), 0, 1)[..., None]
    blended = Image.fromarray(((1 - alpha) * rgb + alpha * colours).astype(np.uint8), mode="RGB")
    if caption:
        ImageDraw.Draw(blended).text((4, 4), caption, fill=(255, 255, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    blended.save(tmp, format="PNG", compress_level=1)  # fast zlib: a review overlay, not an archive
    os.replace(tmp, path)
    return path


def _jet(v: np.ndarray) -> np.ndarray:
    """The jet colour map as (h, w, 3) floats in 0..255."""
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.stack([r, g, b], axis=-1) * 255.0


# --------------------------------------------------------------------------- training data


@dataclass
class Split:
    paths: list[Path]
    labels: np.ndarray  # 0 = NORMAL, 1 = PNEUMONIA

    def counts(self) -> dict[str, int]:
        return {CLASS_NAMES[i]: int((self.labels == i).sum()) for i in (0, 1)}


def _class_files(folder: Path) -> Split | None:
    if not folder.is_dir():
        return None
    paths: list[Path] = []
    labels: list[int] = []
    for index, cls in enumerate(CLASS_NAMES):
        sub = _find_class_dir(folder, cls)
        if sub is None:
            continue
        files = sorted(p for p in sub.rglob("*") if p.is_file() and not p.name.startswith("."))
        files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES or not p.suffix]
        paths += files
        labels += [index] * len(files)
    return Split(paths, np.asarray(labels, dtype=np.int32)) if paths else None


def _find_class_dir(folder: Path, cls: str) -> Path | None:
    for child in folder.iterdir():
        if child.is_dir() and child.name.upper() == cls:
            return child
    return None


def find_layout(root: Path) -> dict[str, Split]:
    """The splits found under ``root``: ``train`` always, ``val`` and ``test`` when present.

    ``root`` is the folder holding ``train/`` (the Kaggle ``chest_xray`` layout), or a folder that holds
    ``NORMAL/`` and ``PNEUMONIA/`` directly (then it is all training data).

    Raises:
        InvalidInput: no usable layout, or a class missing from ``train``.
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a folder")
    if (root / "chest_xray").is_dir() and not (root / "train").is_dir():
        root = root / "chest_xray"
    splits: dict[str, Split] = {}
    for name in ("train", "val", "test"):
        folder = next((c for c in root.iterdir() if c.is_dir() and c.name.lower() == name), None)
        found = _class_files(folder) if folder is not None else None
        if found is not None:
            splits[name] = found
    if "train" not in splits:
        direct = _class_files(root)
        if direct is None:
            raise InvalidInput(
                f"{root}: expected train/NORMAL and train/PNEUMONIA folders of PNG, JPEG or DICOM images "
                "(the Kaggle chest_xray layout; val/ and test/ are optional)"
            )
        splits["train"] = direct
    counts = splits["train"].counts()
    missing = [c for c, n in counts.items() if n == 0]
    if missing:
        raise InvalidInput(f"{root}: no training images for {', '.join(missing)} (found {counts})")
    return splits


def patient_group(path: Path) -> str:
    """The group a training image is split by: ``personNNN`` in Kaggle file names, else the file itself.

    Images of one patient then never sit on both sides of a train/test split.
    """
    match = re.match(r"(person\d+)_", path.name, flags=re.IGNORECASE)
    return match.group(1).lower() if match else str(path)


def _group_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Hold out ``fraction`` of each class, whole patient groups at a time."""
    rng = np.random.default_rng(seed)
    keep_idx: list[int] = []
    held_idx: list[int] = []
    for cls in (0, 1):
        idx = np.flatnonzero(split.labels == cls)
        groups: dict[str, list[int]] = {}
        for i in idx:
            groups.setdefault(patient_group(split.paths[i]), []).append(int(i))
        keys = sorted(groups)
        rng.shuffle(keys)
        target = max(1, round(fraction * len(idx)))
        taken = 0
        for k in keys:
            if taken < target and len(keys) > 1:
                held_idx += groups[k]
                taken += len(groups[k])
            else:
                keep_idx += groups[k]
    keep_idx.sort()
    held_idx.sort()

    def sub(ix: list[int]) -> Split:
        return Split([split.paths[i] for i in ix], split.labels[ix])

    return sub(keep_idx), sub(held_idx)


def fingerprint(paths: Sequence[Path], root: Path) -> str:
    """SHA-256 over every training file's relative path and content hash: which data made this model."""
    digest = hashlib.sha256()
    for p in sorted(paths, key=lambda q: str(q)):
        rel = os.path.relpath(p, root)
        digest.update(rel.encode() + b"\0" + _file_sha256(p).encode() + b"\n")
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def decode_many(
    paths: Sequence[Path],
    size: int,
    *,
    threads: int = defaults.IMAGING_DECODE_THREADS,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """Decode and resize images in parallel threads.

    Returns:
        ``(pixels, rejected)``: a ``(n, size, size)`` float32 array with NaN rows for rejected images,
        and (path, reason) for each rejected one.
    """
    out = np.full((len(paths), size, size), np.nan, dtype=np.float32)
    rejected: list[tuple[Path, str]] = []

    def one(i: int) -> None:
        try:
            out[i] = images.load_for_model(paths[i], size)[0]
        except images.ImageRejected as exc:
            rejected.append((paths[i], str(exc)))

    done = 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for _ in pool.map(one, range(len(paths))):
            done += 1
            if progress and (done % 200 == 0 or done == len(paths)):
                progress(done, len(paths))
    return out, rejected


# --------------------------------------------------------------------------- training


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

    Falls back to 0.5 when the validation data hold only one class.
    """
    if not isinstance(strategy, str):
        return float(strategy)
    from sklearn.metrics import roc_curve

    if len(np.unique(y_true)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y_true, scores)
    best = int(np.argmax(tpr - fpr))
    return float(np.clip(thr[best], 1e-6, 1 - 1e-6))


def evaluate(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """AUC, sensitivity, specificity, accuracy and the confusion matrix at ``threshold``."""
    from sklearn.metrics import confusion_matrix, roc_auc_score

    pred = (scores >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
    both = len(np.unique(y_true)) == 2
    return {
        "n": int(len(y_true)),
        "positives": int(y_true.sum()),
        "auc": round(float(roc_auc_score(y_true, scores)), 4) if both else None,
        "threshold": round(float(threshold), 4),
        "sensitivity": round(float(tp / (tp + fn)), 4) if tp + fn else None,
        "specificity": round(float(tn / (tn + fp)), 4) if tn + fp else None,
        "accuracy": round(float((tp + tn) / len(y_true)), 4) if len(y_true) else None,
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }


def roc_png(y_true: np.ndarray, scores: np.ndarray, threshold: float, title: str) -> bytes:
    """A ROC curve with the chosen operating point, as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    if len(np.unique(y_true)) == 2:
        fpr, tpr, _ = roc_curve(y_true, scores)
        ax.plot(fpr, tpr, label="model")
        m = evaluate(y_true, scores, threshold)
        ax.scatter(
            [1 - m["specificity"]], [m["sensitivity"]], color="red", zorder=3, label=f"threshold {threshold:.2f}"
        )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def train_xray(
    data_dir: Path,
    *,
    config: XrayConfig = XrayConfig(),
    seed: int = 0,
    holdout_fraction: float = 0.15,
    threshold: str | float = "youden",
    threads: int = defaults.IMAGING_DECODE_THREADS,
    log: Callable[[str], None] = lambda _m: None,
) -> TrainedXray:
    """Train the CNN on ``data_dir`` (see :func:`find_layout`) and evaluate it on held-out images.

    Splits: ``val/`` and ``test/`` are used when each holds at least ``MIN_SPLIT_PER_CLASS`` images per
    class; otherwise ``holdout_fraction`` of ``train`` is held out for each (whole patients at a time),
    and the metadata says so.

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
    for name, split in (("train", train), ("val", splits["val"]), ("test", splits["test"])):
        log(f"decoding {name}: {len(split.paths)} images {split.counts()}")
        x, bad = decode_many(split.paths, size, threads=threads, progress=lambda d, t, n=name: log(f"  {n} {d}/{t}"))
        keep = ~np.isnan(x).any(axis=(1, 2))
        arrays[name] = (x[keep], split.labels[keep])
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
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            log(f"  epoch {epoch + 1}: " + " ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items())))

    history = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        class_weight=class_weight,
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
        "seed": seed,
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    png = roc_png(y_test, test_scores, chosen, f"X-ray CNN, held-out test (n={len(y_test)})")
    return TrainedXray(
        keras_model=model, meta=meta, roc_png=png, history={k: list(v) for k, v in history.history.items()}
    )


def _predict_all(model: XrayModel, x: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([model.predict(x[i : i + batch]) for i in range(0, len(x), batch)]) if len(x) else np.zeros(0)


def write_card(trained: TrainedXray, artifact: Path) -> Path:
    """Write the model card (``.json`` metrics beside the artifact, ``roc.png``, ``card.md``)."""
    folder = artifact.parent
    (folder / "roc.png").write_bytes(trained.roc_png)
    card = {**trained.meta, "training_source": trained.meta["training_data"]["root"]}
    artifact.with_suffix(".json").write_text(json.dumps(card, indent=2, default=str))
    t = trained.meta["metrics"]["test"]
    cm = t["confusion_matrix"]
    data = trained.meta["training_data"]
    size, threshold = trained.meta["input_size"], trained.meta["threshold"]
    md = [
        "# X-ray pneumonia CNN",
        "",
        f"- Trained on: `{data['root']}` (fingerprint `{data['fingerprint'][:16]}`)",
        f"- Input: {size}x{size} grayscale; threshold {threshold:.3f}",
        f"- Held-out test (n={t['n']}): AUC {t['auc']}, sensitivity {t['sensitivity']}, specificity {t['specificity']}",
        f"- Confusion matrix: TN {cm['tn']}, FP {cm['fp']}, FN {cm['fn']}, TP {cm['tp']}",
        *[f"- Note: {n}" for n in data["notes"]],
        "",
        "Intended use: triage aid whose every positive is reviewed by a clinician. Not a diagnosis.",
        "![ROC](roc.png)",
        "",
    ]
    path = artifact.with_suffix(".card.md")
    path.write_text("\n".join(md))
    return path
