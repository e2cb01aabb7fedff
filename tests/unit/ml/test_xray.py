"""The X-ray CNN: architecture, training on the chest_xray layout, honest metrics, safe loading, Grad-CAM."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medbatch.errors import InvalidInput, ModelMisconfigured
from medbatch.ml import images, xray
from medbatch.producer.synthetic import synthetic_xray, write_xrays


def test_default_architecture_is_the_articles_cnn():
    model = xray.build_model(xray.XrayConfig())
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    pools = [layer for layer in model.layers if layer.__class__.__name__ == "MaxPooling2D"]
    dense = [layer for layer in model.layers if layer.__class__.__name__ == "Dense"]
    assert model.input_shape == (None, 150, 150, 1)
    assert [c.filters for c in convs] == [32, 64, 128] and len(pools) == 3
    assert [d.units for d in dense] == [512, 1] and dense[-1].activation.__name__ == "sigmoid"
    assert convs[-1].name == xray.LAST_CONV


def test_trained_artifact_carries_threshold_classes_fingerprint_and_held_out_metrics(xray_artifact):
    with zipfile.ZipFile(xray_artifact) as zf:
        assert sorted(zf.namelist()) == ["meta.json", "model.keras"]
        meta = json.loads(zf.read("meta.json"))
    assert meta["input_size"] == 48 and meta["class_names"] == ["NORMAL", "PNEUMONIA"]
    assert 0 < meta["threshold"] < 1
    assert len(meta["training_data"]["fingerprint"]) == 64
    test = meta["metrics"]["test"]
    cm = test["confusion_matrix"]
    assert test["n"] == sum(cm.values()) > 0
    assert test["n"] + meta["metrics"]["validation"]["n"] + meta["metrics"]["n_train"] == 80
    # Synthetic consolidations are easy: a model that learned nothing would sit near AUC 0.5
    assert test["auc"] > 0.8, test
    assert (xray_artifact.parent / "roc.png").read_bytes().startswith(images.PNG_MAGIC)
    assert "no test/ folder" in " ".join(meta["training_data"]["notes"])


def test_loaded_model_predicts_in_compiled_batches_like_keras(xray_artifact):
    model = xray.load_model(xray_artifact)
    rng = np.random.default_rng(0)
    batch = np.stack([images.resize(synthetic_xray(i % 2, 64, rng), 48) for i in range(10)])
    probs = model.predict(batch)
    reference = model.keras_model.predict(batch[..., None], verbose=0).reshape(-1)
    assert probs.shape == (10,) and np.all((0 <= probs) & (probs <= 1))
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    assert model.predict(np.zeros((0, 48, 48), np.float32)).shape == (0,)
    # Positives (odd indices) score higher than normals on average
    assert probs[1::2].mean() > probs[0::2].mean()


def test_gradcam_heatmaps_are_normalised_and_findings_are_marked_draft(xray_artifact, tmp_path):
    model = xray.load_model(xray_artifact)
    x = np.stack([images.resize(synthetic_xray(1, 64, np.random.default_rng(i)), 48) for i in range(3)])
    heat = model.gradcam(x)
    assert heat.shape == (3, 48, 48) and heat.min() >= 0 and heat.max() <= 1
    text = xray.draft_findings(0.91, model.threshold, heat[0], "xray v1", ["colour converted"])
    assert text.startswith("DRAFT") and "clinician review" in text and "0.91" in text
    out = xray.overlay_png(x[0], heat[0], tmp_path / "o.png", caption="DRAFT")
    assert out.read_bytes().startswith(images.PNG_MAGIC)


def test_compiled_gradcam_matches_the_eager_textbook_computation(xray_artifact):
    # Given a trained model and images of both classes, in batches of different sizes
    import keras
    import tensorflow as tf

    model = xray.load_model(xray_artifact)
    x = np.stack([images.resize(synthetic_xray(i % 2, 64, np.random.default_rng(i)), 48) for i in range(5)])
    m = model.keras_model
    grad_model = keras.Model(m.inputs, [m.get_layer(xray.LAST_CONV).output, m.output])

    def eager(batch):  # Selvaraju et al.: channel weights = mean gradient; ReLU of the weighted sum; upsampled
        with tf.GradientTape() as tape:
            conv, pred = grad_model(tf.convert_to_tensor(batch[..., None]), training=False)
            score = tf.reduce_sum(pred[:, 0])
        grads = tape.gradient(score, conv)
        cam = tf.nn.relu(tf.reduce_sum(tf.reduce_mean(grads, axis=(1, 2), keepdims=True) * conv, axis=-1))
        cam = tf.image.resize(cam[..., None], batch.shape[1:3], method="bilinear")[..., 0].numpy()
        peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
        return np.where(peak > 0, cam / np.maximum(peak, 1e-12), 0.0)

    # Then the compiled call gives the same maps, whatever the batch size, and an empty batch gives none
    for batch in (x, x[:2], x[4:]):
        np.testing.assert_allclose(model.gradcam(batch), eager(batch), atol=1e-5)
    assert model.gradcam(x[:0]).shape == (0, 48, 48)
    # and a map is a function of its own image only (no batch statistics leak between images)
    np.testing.assert_allclose(model.gradcam(x)[1], model.gradcam(x[1:2])[0], atol=1e-5)


def test_artifact_is_loaded_in_keras_safe_mode(tmp_path):
    # Given an artifact whose model holds a Lambda layer (arbitrary code on load)
    import keras

    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Lambda(lambda t: t * 2)(inputs)
    evil = keras.Model(inputs, outputs)
    meta = {"format": xray.ARTIFACT_FORMAT, "input_size": 8, "threshold": 0.5, "class_names": list(xray.CLASS_NAMES)}
    path = xray.save_model(evil, meta, tmp_path)
    # Then loading refuses it instead of running the lambda
    with pytest.raises((ModelMisconfigured, ValueError)):
        xray.load_model(path)


def test_artifact_with_unexpected_entries_is_refused(tmp_path):
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("meta.json", "{}")
        zf.writestr("model.keras", b"")
        zf.writestr("../../evil.py", "print(1)")
    with pytest.raises(ModelMisconfigured, match="not a medbatch X-ray artifact"):
        xray.load_model(path)


def test_layout_is_found_in_the_kaggle_shape_and_errors_say_what_is_missing(tmp_path):
    write_xrays(tmp_path / "chest_xray", 3, size=32, seed=1)
    write_xrays(tmp_path / "chest_xray", 2, size=32, seed=2, split="test")
    splits = xray.find_layout(tmp_path)  # the parent of chest_xray/ works too
    assert splits["train"].counts() == {"NORMAL": 3, "PNEUMONIA": 3}
    assert splits["test"].counts() == {"NORMAL": 2, "PNEUMONIA": 2}
    only_normal = tmp_path / "one"
    (only_normal / "train" / "NORMAL").mkdir(parents=True)
    (only_normal / "train" / "NORMAL" / "a.png").write_bytes(b"x")
    with pytest.raises(InvalidInput, match="no training images for PNEUMONIA"):
        xray.find_layout(only_normal)
    with pytest.raises(InvalidInput, match="train/NORMAL and train/PNEUMONIA"):
        xray.find_layout(tmp_path / "chest_xray" / "train" / "NORMAL")


def test_holdout_keeps_each_patient_on_one_side():
    paths = [Path(f"person{p}_bacteria_{i}.jpeg") for p in range(20) for i in range(3)]
    split = xray.Split(paths, np.array([1] * len(paths), dtype=np.int32))
    keep, held = xray._group_split(split, 0.2, seed=0)
    patients = lambda s: {xray.patient_group(p) for p in s.paths}  # noqa: E731
    assert patients(keep).isdisjoint(patients(held))
    assert len(keep.paths) + len(held.paths) == 60 and 6 <= len(held.paths) <= 18


def test_fingerprint_changes_when_any_training_file_changes(tmp_path):
    files = write_xrays(tmp_path, 2, size=16, seed=0)
    before = xray.fingerprint(files, tmp_path)
    assert xray.fingerprint(list(reversed(files)), tmp_path) == before
    files[0].write_bytes(files[0].read_bytes() + b"\0")
    assert xray.fingerprint(files, tmp_path) != before


def test_threshold_youden_and_fixed():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.35, 0.4, 0.8, 0.9])
    t = xray.choose_threshold(y, s)
    assert 0.35 < t <= 0.4
    assert xray.choose_threshold(y, s, 0.7) == 0.7
    m = xray.evaluate(y, s, t)
    assert m["sensitivity"] == 1.0 and m["specificity"] == 1.0 and m["auc"] == 1.0


@pytest.mark.parametrize(
    ("rows", "cols", "expected"),
    [
        (slice(120, 150), slice(0, 30), "lower zone, image left"),
        (slice(0, 30), slice(120, 150), "upper zone, image right"),
        (slice(60, 90), slice(60, 90), "middle zone, central"),
        (slice(0, 0), slice(0, 0), "no focal area"),
    ],
)
def test_attention_region_names_where_the_heatmap_concentrates(rows, cols, expected):
    heat = np.zeros((150, 150), np.float32)
    heat[rows, cols] = 1.0
    assert xray.attention_region(heat) == expected
