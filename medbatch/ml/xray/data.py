"""X-ray training data: the chest_xray folder layout, patient-grouped splits, fingerprint, parallel decoding."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medbatch import defaults
from medbatch.errors import InvalidInput
from medbatch.ml import images
from medbatch.ml.artifacts import file_sha256
from medbatch.ml.xray.model import CLASS_NAMES

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
#: A val/ or test/ folder smaller than this per class is too small to trust (the Kaggle set's val/ has 8).
MIN_SPLIT_PER_CLASS = 25


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
        digest.update(rel.encode() + b"\0" + file_sha256(p).encode() + b"\n")
    return digest.hexdigest()


#: The per-image input features the X-ray drift check compares (see :func:`input_features`).
INPUT_FEATURES = ("intensity_mean", "intensity_std", "width", "height", "aspect_ratio")


def input_features(model_input: np.ndarray, original_shape: Sequence[int]) -> dict[str, float]:
    """The simple per-image features the X-ray drift reference is made of: mean and standard deviation of the
    model input's pixels (the resized [0, 1] array, identical in training and serving) and the original
    width, height and aspect ratio (width / height). Training and the imaging pipeline both call this."""
    h, w = int(original_shape[0]), int(original_shape[1])
    return {
        "intensity_mean": round(float(np.mean(model_input)), 6),
        "intensity_std": round(float(np.std(model_input)), 6),
        "width": float(w),
        "height": float(h),
        "aspect_ratio": round(w / h, 6) if h else float("nan"),
    }


def decode_many(
    paths: Sequence[Path],
    size: int,
    *,
    threads: int = defaults.IMAGING_DECODE_THREADS,
    progress: Callable[[int, int], None] | None = None,
    original_shapes: np.ndarray | None = None,
) -> tuple[np.ndarray, list[tuple[Path, str]]]:
    """Decode and resize images in parallel threads.

    Args:
        original_shapes: when given, an ``(n, 2)`` array that receives each image's (height, width) before
            resizing (left as it was for a rejected image).

    Returns:
        ``(pixels, rejected)``: a ``(n, size, size)`` float32 array with NaN rows for rejected images,
        and (path, reason) for each rejected one.
    """
    out = np.full((len(paths), size, size), np.nan, dtype=np.float32)
    rejected: list[tuple[Path, str]] = []

    def one(i: int) -> None:
        try:
            out[i], image = images.load_for_model(paths[i], size)
            if original_shapes is not None:
                original_shapes[i] = image.original_shape
        except images.ImageRejected as exc:
            rejected.append((paths[i], str(exc)))

    done = 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for _ in pool.map(one, range(len(paths))):
            done += 1
            if progress and (done % 200 == 0 or done == len(paths)):
                progress(done, len(paths))
    return out, rejected
