"""Synthetic patient records, plainly labelled as such: for the demo, tests and benchmarks only.

Values are drawn from rough adult distributions; they describe no real person. ``bad_fraction`` of
the rows carry a realistic mistake (missing value, text in a number column, implausible value).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medbatch.producer.records import SCHEMAS

_BAD_VALUES = ["", "abc", "-5", "999", "n/a"]


def write_patients(
    path: Path, workload: str, n: int, *, seed: int = 0, bad_fraction: float = 0.0, chunk: int = 200_000
) -> Path:
    """Write ``n`` synthetic patients for ``workload`` (with a ``patient_id`` column) to ``path``.

    Generated in chunks, so a million rows need little memory.
    """
    rng = np.random.default_rng(seed)
    columns = [c.name for c in SCHEMAS[workload]]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", *columns])
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            cols = {
                "age": rng.integers(25, 85, m),
                "bmi": np.round(rng.normal(26.5, 4.5, m).clip(15, 55), 1),
                "exercise_frequency": rng.poisson(2.0, m).clip(0, 14),
                "smoking_history": np.where(rng.random(m) < 0.35, rng.integers(1, 40, m), 0),
                "blood_pressure": rng.normal(132, 20, m).round().clip(85, 240).astype(int),
                "cholesterol": rng.normal(236, 44, m).round().clip(110, 600).astype(int),
                "diabetes": (rng.random(m) < 0.08).astype(int),
            }
            table = np.column_stack([cols[c].astype(object) for c in columns])
            bad = rng.random(m) < bad_fraction
            for i in np.flatnonzero(bad):
                table[i, rng.integers(0, len(columns))] = _BAD_VALUES[rng.integers(0, len(_BAD_VALUES))]
            ids = [f"SYN-{start + i + 1:07d}" for i in range(m)]
            writer.writerows([ids[i], *table[i]] for i in range(m))
    return path


# --------------------------------------------------------------------------- synthetic radiographs


def synthetic_xray(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One SYNTHETIC chest-radiograph-like image (float in [0, 1], air dark): two lung fields, ribs,
    a mediastinum; ``label=1`` adds patchy consolidations in a lung zone. It resembles no patient."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.55 + 0.1 * yy  # soft tissue, brighter towards the abdomen
    for cx in (0.3, 0.7):  # lung fields: dark ellipses
        lung = ((xx - cx + rng.normal(0, 0.01)) / 0.17) ** 2 + ((yy - 0.48) / 0.33) ** 2 < 1
        img = np.where(lung, 0.18 + 0.05 * yy, img)
    img += 0.06 * (np.sin(yy * np.pi * rng.uniform(14, 18) + rng.uniform(0, 6)) > 0.6)  # ribs
    img = np.where(np.abs(xx - 0.5) < 0.07 + 0.05 * yy, 0.8, img)  # mediastinum and spine
    if label:
        for _ in range(int(rng.integers(2, 5))):
            cx = rng.choice([0.3, 0.7]) + rng.normal(0, 0.05)
            cy = rng.uniform(0.35, 0.75)
            r = rng.uniform(0.05, 0.1)
            img += 0.35 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r**2)))
    img += rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def write_xrays(
    root: Path,
    n_per_class: int,
    *,
    size: int = 150,
    seed: int = 0,
    split: str = "train",
    formats: tuple[str, ...] = ("png",),
) -> list[Path]:
    """Write a SYNTHETIC chest_xray-style folder: ``root/split/NORMAL`` and ``root/split/PNEUMONIA``.

    For the demo, tests and benchmarks only; the images are generated and labelled ``SYNTHETIC`` in
    their file names. ``formats`` cycles through ``png``, ``jpeg`` and ``dicom`` (a CR, MONOCHROME1,
    12-bit DICOM with a window, like a real computed radiograph).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    written: list[Path] = []
    for label, cls in enumerate(("NORMAL", "PNEUMONIA")):
        folder = Path(root) / split / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            pixels = synthetic_xray(label, size, rng)
            fmt = formats[i % len(formats)]
            stem = folder / f"SYNTHETIC-{cls.lower()}-{split}-{seed}-{i:05d}"
            if fmt == "dicom":
                path = write_synthetic_dicom(stem.with_suffix(".dcm"), pixels, patient_id=f"SYN-{seed}-{label}-{i}")
            else:
                path = stem.with_suffix(".png" if fmt == "png" else ".jpg")
                Image.fromarray((pixels * 255).astype(np.uint8), mode="L").save(path, quality=92)
            written.append(path)
    return written


def write_synthetic_dicom(
    path: Path, pixels: np.ndarray, *, patient_id: str = "SYNTHETIC", modality: str = "CR", bits: int = 12
) -> Path:
    """Write ``pixels`` ([0, 1], air dark) as a MONOCHROME1 DICOM with a VOI window: the layout CR systems
    export. The patient is called SYNTHETIC; nothing in it describes a real person."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "SYNTHETIC^PATIENT"
    ds.PatientID = patient_id
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    top = 2**bits - 1
    stored = np.round((1.0 - np.clip(pixels, 0, 1)) * top).astype(np.uint16)  # MONOCHROME1: air bright in storage
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = top / 2
    ds.WindowWidth = top + 1
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return Path(path)
