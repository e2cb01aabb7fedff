"""Unit tests for medbatch.ml.tabular: training, save/load verification, prediction contract."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from medbatch.errors import InvalidInput, ModelMisconfigured
from medbatch.ml import tabular
from medbatch.ml.tabular import (
    RISK_FEATURES,
    TREATMENT_FEATURES,
    TabularModel,
    artifact_version,
    load_model,
    load_training_csv,
    save_model,
    train_risk,
    train_treatment,
)

SHIPPED_MODELS = Path(tabular.__file__).resolve().parents[2] / "models"  # medbatch/models


def _risk_frame(n: int = 400, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.uniform(25, 75, n)
    frame = pd.DataFrame(
        {
            "age": age,
            "bmi": rng.normal(26, 4, n),
            "exercise_frequency": rng.choice([0.0, 2.0, 4.0], n),
            "smoking_history": rng.integers(0, 40, n).astype(float),
            "sex": rng.choice(["male", "female"], n),
        }
    )
    logit = -6 + 0.1 * age + 0.03 * frame["smoking_history"]
    frame["outcome"] = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame


def _treatment_frame(n: int = 300, seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.uniform(30, 80, n),
            "blood_pressure": rng.normal(135, 20, n),
            "cholesterol": rng.normal(230, 40, n),
            "smoking_history": rng.integers(0, 30, n).astype(float),
            "diabetes": rng.integers(0, 2, n).astype(float),
            "sex": rng.choice(["male", "female"], n),
        }
    )
    plan = np.where(frame["blood_pressure"] > 145, "medication", "lifestyle_only")
    plan = np.where((frame["cholesterol"] > 260) & (plan == "lifestyle_only"), "statin", plan)
    frame["outcome"] = plan
    return frame


@pytest.fixture(scope="module")
def trained_risk():
    return train_risk(_risk_frame(), seed=0, cv_folds=3)


@pytest.fixture(scope="module")
def trained_treatment():
    return train_treatment(_treatment_frame(), seed=0, cv_folds=3)


@pytest.fixture()
def saved_risk(trained_risk, tmp_path) -> Path:
    return save_model(trained_risk, tmp_path, training_source="synthetic unit-test frame")


def test_risk_training_stores_threshold_and_held_out_metrics(trained_risk):
    # Given a synthetic frame whose outcome rises with age
    # When the risk model is trained
    metrics = trained_risk.metrics
    # Then it has a threshold in (0, 1) and metrics for the model and the baseline on the same split
    assert 0 < trained_risk.threshold < 1
    assert trained_risk.classes == ["low", "high"]
    for block in (metrics["model"], metrics["baseline"]):
        assert {"auc", "accuracy", "brier", "confusion_matrix", "at_threshold"} <= set(block)
    assert metrics["model"]["auc"] > 0.6
    assert metrics["n_train"] + metrics["n_test"] == 400
    assert metrics["model"]["calibration_bins"]
    assert set(metrics["subgroups"]["sex"]) == {"female", "male"}
    assert set(metrics["subgroups"]["age_band"]) == {"<45", "45-59", "60+"}
    json.dumps(metrics)  # JSON-serialisable
    assert "clinician" in trained_risk.card and "baseline" in trained_risk.card


def test_save_load_round_trip_keeps_predictions_identical(trained_risk, saved_risk):
    # Given a trained risk model saved to disk
    frame = _risk_frame(50, seed=9)
    # When it is loaded back and both predict the same rows
    model = load_model(saved_risk)
    before = trained_risk.estimator.predict_proba(frame[list(RISK_FEATURES)])
    after = model.predict(frame)
    # Then the probabilities are identical and labels follow the stored threshold
    np.testing.assert_array_equal(after.probabilities, before)
    np.testing.assert_array_equal(after.scores, before[:, 1])
    assert after.labels == ["high" if p >= model.threshold else "low" for p in before[:, 1]]
    assert model.threshold == trained_risk.threshold
    assert model.features == RISK_FEATURES


def test_version_is_hash_of_artifact_bytes(saved_risk):
    # Given a saved model
    expected = hashlib.sha256(saved_risk.read_bytes()).hexdigest()[:16]
    # When its version is read three ways
    meta = json.loads(saved_risk.with_suffix(".json").read_text())
    # Then all agree with the hash of the bytes
    assert artifact_version(saved_risk) == expected
    assert meta["version"] == expected
    assert load_model(saved_risk).version == expected
    assert saved_risk.with_name("risk.card.md").read_text().count(expected) == 1


def test_changed_artifact_bytes_are_refused(saved_risk):
    # Given a saved artifact whose bytes were changed after saving
    data = bytearray(saved_risk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    saved_risk.write_bytes(bytes(data))
    # When it is loaded / Then it is refused as misconfigured
    with pytest.raises(ModelMisconfigured, match="version"):
        load_model(saved_risk)


def test_metadata_version_mismatch_is_refused(saved_risk):
    # Given metadata that names a different version
    meta_path = saved_risk.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["version"] = "0" * 16
    meta_path.write_text(json.dumps(meta))
    # When the model is loaded / Then it is refused
    with pytest.raises(ModelMisconfigured, match="version"):
        load_model(saved_risk)


def test_missing_artifact_or_metadata_is_refused(saved_risk, tmp_path):
    # Given no artifact at all, then an artifact without its metadata
    with pytest.raises(ModelMisconfigured, match="missing"):
        load_model(tmp_path / "nothing.skops")
    saved_risk.with_suffix(".json").unlink()
    with pytest.raises(ModelMisconfigured, match="missing"):
        load_model(saved_risk)


def test_untrusted_types_are_refused_even_with_matching_version(tmp_path):
    # Given an artifact referring to a function outside the trusted list (os.getcwd stands in for
    # anything a crafted file could call) and metadata that matches its hash
    pipe = Pipeline([("f", FunctionTransformer(os.getcwd)), ("lr", LogisticRegression())])
    path = tmp_path / "risk.skops"
    path.write_bytes(sio.dumps(pipe, compression=zipfile.ZIP_DEFLATED))
    meta = {
        "name": "risk",
        "version": artifact_version(path),
        "features": list(RISK_FEATURES),
        "classes": ["low", "high"],
        "threshold": 0.5,
    }
    path.with_suffix(".json").write_text(json.dumps(meta))
    # When it is loaded / Then skops' untrusted types make it misconfigured
    with pytest.raises(ModelMisconfigured, match="untrusted"):
        load_model(path)


def test_missing_feature_column_raises_invalid_input(saved_risk):
    # Given a frame without the bmi column
    frame = _risk_frame(5).drop(columns=["bmi"])
    # When the model predicts / Then the error names the column
    with pytest.raises(InvalidInput, match="bmi"):
        load_model(saved_risk).predict(frame)


def test_empty_frame_gives_empty_predictions(saved_risk):
    model = load_model(saved_risk)
    result = model.predict(_risk_frame(5).iloc[:0])
    assert result.labels == [] and result.probabilities.shape == (0, 2)


def test_three_class_treatment_trains_saves_and_predicts(trained_treatment, tmp_path):
    # Given a synthetic frame with three plan classes
    # When the treatment model is trained, saved and loaded
    path = save_model(trained_treatment, tmp_path, training_source="synthetic three-class frame")
    model = load_model(path)
    result = model.predict(_treatment_frame(40, seed=5))
    # Then it predicts over all three classes with probabilities summing to 1
    assert model.classes == ["lifestyle_only", "medication", "statin"]
    assert result.probabilities.shape == (40, 3)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0)
    np.testing.assert_array_equal(result.scores, result.probabilities.max(axis=1))
    assert set(result.labels) <= set(model.classes)
    metrics = trained_treatment.metrics
    assert metrics["task"] == "multiclass"
    assert metrics["model"]["auc"] > 0.6 and metrics["baseline"]["auc"] is not None
    assert np.array(metrics["model"]["confusion_matrix"]["matrix"]).shape == (3, 3)
    assert model.threshold is None


def test_risk_outcome_must_be_binary():
    frame = _risk_frame(100)
    frame["outcome"] = 2
    with pytest.raises(InvalidInput, match="0/1"):
        train_risk(frame)


def test_training_csv_names_missing_columns_and_counts_dropped_rows(tmp_path):
    # Given a CSV lacking cholesterol, and one with a blank and a non-numeric cell
    frame = _treatment_frame(30)
    frame.drop(columns=["cholesterol"]).to_csv(tmp_path / "bad.csv", index=False)
    frame = frame.astype({"age": object})
    frame.loc[0, "age"] = "n/a"
    frame.loc[1, "diabetes"] = np.nan
    frame.rename(columns={"outcome": "plan"}).to_csv(tmp_path / "good.csv", index=False)
    # When they are read / Then the missing column is named and two rows are dropped
    with pytest.raises(InvalidInput, match="cholesterol"):
        load_training_csv(tmp_path / "bad.csv", "treatment")
    loaded = load_training_csv(tmp_path / "good.csv", "treatment", target="plan")
    assert loaded.attrs["dropped_rows"] == 2
    assert len(loaded) == 28
    assert list(loaded.columns) == [*TREATMENT_FEATURES, "outcome", "sex"]


@pytest.mark.parametrize("name", ["risk", "treatment"])
def test_shipped_default_artifacts_load_and_give_probabilities(name):
    # Given the artifacts shipped in medbatch/models/
    path = SHIPPED_MODELS / f"{name}.skops"
    # When one is loaded and predicts plausible rows
    model = load_model(path)
    assert isinstance(model, TabularModel)
    frame = _risk_frame(20) if name == "risk" else _treatment_frame(20)
    result = model.predict(frame)
    # Then probabilities lie in [0, 1] and sum to 1, and the artifact stays small
    assert np.all((result.probabilities >= 0) & (result.probabilities <= 1))
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0)
    assert path.stat().st_size < 5 * 1024 * 1024
    assert model.metadata["training_source"]


def test_shipped_risk_model_beats_chance_on_held_out_split():
    # Given the shipped risk metadata / Then its stored held-out AUC is better than chance
    meta = json.loads((SHIPPED_MODELS / "risk.json").read_text())
    assert meta["metrics"]["model"]["auc"] > 0.5


def test_tabular_module_imports_no_service_clients():
    # Given a fresh interpreter / When medbatch.ml.tabular is imported
    code = (
        "import sys, medbatch.ml.tabular\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'celery', 'sqlalchemy', 'redis', 'kombu'}"
        " or m.startswith(('medbatch.db', 'medbatch.worker', 'medbatch.tasks')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Then no service client (or service-bound medbatch package) was imported
    assert out.stdout.strip() == ""
