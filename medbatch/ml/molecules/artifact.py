"""The molecule artifact: one Keras zip (``model.keras`` + ``vocab.json`` + ``meta.json``) and its card."""

from __future__ import annotations

import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medbatch.errors import ModelMisconfigured
from medbatch.ml.artifacts import file_version, json_bytes, load_keras_zip, save_keras_zip
from medbatch.ml.molecules.model import MoleculeGenerator
from medbatch.ml.molecules.tokens import Vocabulary
from medbatch.ml.moses import MOSES_CHARRNN

if TYPE_CHECKING:
    from medbatch.ml.molecules.training import TrainedGenerator

ARTIFACT_NAME = "molecules.zip"
ARTIFACT_FORMAT = "medbatch-molecules-1"
ARTIFACT_ENTRIES = {"model.keras", "vocab.json", "meta.json"}


def save_model(trained: TrainedGenerator, directory: Path, *, extra_meta: dict[str, Any] | None = None) -> Path:
    """Write the artifact (zip of ``model.keras`` + ``vocab.json`` + ``meta.json``) into ``directory``.

    Returns:
        The artifact's path (``directory/molecules.zip``).
    """
    meta = {**trained.meta, **(extra_meta or {})}
    entries = [("vocab.json", json_bytes(trained.vocab.to_json())), ("meta.json", json_bytes(meta))]
    return save_keras_zip(
        trained.keras_model, Path(directory) / ARTIFACT_NAME, entries, compression=zipfile.ZIP_DEFLATED
    )


def load_model(path: Path) -> MoleculeGenerator:
    """Load an artifact written by :func:`save_model` (Keras ``safe_mode=True``).

    Raises:
        ModelMisconfigured: not a medbatch molecule artifact, or unreadable.
    """
    path = Path(path)
    model, meta, others = load_keras_zip(
        path, entries=ARTIFACT_ENTRIES, artifact_format=ARTIFACT_FORMAT, kind="molecule"
    )
    try:
        vocab = Vocabulary.from_json(json.loads(others["vocab.json"]))
    except (KeyError, ValueError) as exc:
        raise ModelMisconfigured(f"{path}: cannot load molecule model: {type(exc).__name__}: {exc}") from None
    if int(model.output_shape[-1]) != vocab.size:
        raise ModelMisconfigured(f"{path}: model outputs {model.output_shape[-1]} tokens, vocabulary has {vocab.size}")
    return MoleculeGenerator(
        name=meta.get("name", "molecules"), version=file_version(path), keras_model=model, vocab=vocab, meta=meta
    )


def write_card(trained: TrainedGenerator, artifact: Path) -> Path:
    """Write the model card ``<artifact stem>.json`` beside the artifact (metrics, data, seed, settings)."""
    artifact = Path(artifact)
    meta = trained.meta
    card = {
        "name": "molecules",
        "version": file_version(artifact),
        "architecture": meta["architecture"],
        "config": meta["config"],
        "parameters": meta["parameters"],
        "vocab_size": meta["vocab_size"],
        "seed": meta["seed"],
        "subset": meta.get("subset"),
        "epochs": meta.get("epochs"),
        "history": meta["history"],
        "stopped_by_time_budget": meta["stopped_by_time_budget"],
        "train_seconds": meta["train_seconds"],
        "metrics": meta.get("metrics", {}),
        "reference_moses_charrnn": MOSES_CHARRNN,
        "training_source": meta.get("training_source", ""),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "artifact_bytes": artifact.stat().st_size,
        "intended_use": (
            "research and demonstration: candidate structures for a chemist to review; not a drug, "
            "not a synthesis plan, no claim of activity or safety"
        ),
    }
    path = artifact.with_suffix(".json")
    path.write_text(json.dumps(card, indent=2, default=str) + "\n")
    return path
