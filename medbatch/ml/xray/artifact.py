"""The X-ray artifact: one Keras zip (``model.keras`` + ``meta.json``) and its model card."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from medbatch.ml.artifacts import file_version, json_bytes, load_keras_zip, read_keras_zip_meta, save_keras_zip
from medbatch.ml.xray.model import ARTIFACT_FORMAT, ARTIFACT_NAME, XrayModel
from medbatch.ml.xray.training import TrainedXray

#: The entries of an X-ray artifact, exactly.
ARTIFACT_ENTRIES = {"model.keras", "meta.json"}


def load_model(path: Path) -> XrayModel:
    """Load an artifact written by :func:`save_model` (Keras ``safe_mode=True``: no code runs from it).

    Raises:
        ModelMisconfigured: not a medbatch X-ray artifact, or unreadable.
    """
    path = Path(path)
    model, meta, _ = load_keras_zip(path, entries=ARTIFACT_ENTRIES, artifact_format=ARTIFACT_FORMAT, kind="X-ray")
    return XrayModel(name=meta.get("name", "xray"), version=file_version(path), keras_model=model, meta=meta)


def read_meta(data: bytes, label: str) -> dict[str, Any]:
    """The ``meta.json`` of artifact bytes written by :func:`save_model`, checked as :func:`load_model`
    checks it, without TensorFlow (drift measured after the worker, e.g. ``medbatch status``). The caller
    verifies the bytes' hash (:func:`medbatch.ml.registry.verified_bytes`).

    Raises:
        ModelMisconfigured: not a medbatch X-ray artifact, or unreadable.
    """
    return read_keras_zip_meta(
        data, label=label, entries=ARTIFACT_ENTRIES, artifact_format=ARTIFACT_FORMAT, kind="X-ray"
    )


def save_model(keras_model, meta: dict[str, Any], directory: Path) -> Path:
    """Write the artifact (zip of ``model.keras`` + ``meta.json``) into ``directory``; returns its path.

    The zip entries carry a fixed timestamp, so the same weights and metadata give the same bytes.
    """
    path = Path(directory) / ARTIFACT_NAME
    return save_keras_zip(keras_model, path, [("meta.json", json_bytes(meta))], compression=zipfile.ZIP_STORED)


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
