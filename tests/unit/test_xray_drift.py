"""X-ray drift (issue 14.3): the training images' input features are the reference; a night drawn like them is
not flagged, a much darker or much larger one is."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from medbatch.ml import drift, xray
from medbatch.producer.synthetic import write_xrays

SIZE = 48


def _decoded(root, n_per_class, *, size, seed):
    paths = write_xrays(root, n_per_class, size=size, seed=seed)
    shapes = np.zeros((len(paths), 2))
    x, bad = xray.decode_many(paths, SIZE, threads=2, original_shapes=shapes)
    assert not bad
    return x, shapes


def _features(x, shapes):
    rows = [xray.input_features(a, s) for a, s in zip(x, shapes, strict=True)]
    return {f: np.array([r[f] for r in rows]) for f in xray.INPUT_FEATURES}


def test_darker_or_larger_night_is_flagged_and_training_like_night_is_not(tmp_path):
    # Given a reference built from 200 training radiographs (64 px) and their held-out scores
    x_train, shapes = _decoded(tmp_path / "train", 100, size=64, seed=1)
    scores = np.random.default_rng(0).uniform(0, 1, 80)
    ref = xray.drift_reference(x_train, shapes, scores)
    assert set(ref["features"]) == set(xray.INPUT_FEATURES) and ref["scores"]["n"] == 80
    assert ref["features"]["width"]["min"] == ref["features"]["width"]["max"] == 64
    # When a night drawn like the training images is compared
    x_like, like_shapes = _decoded(tmp_path / "like", 75, size=64, seed=2)
    like = drift.compare(ref, _features(x_like, like_shapes), scores[:40])
    # Then nothing is flagged
    assert like["flagged"] == [], like["features"]
    assert like["n"] == 150
    # When the same night is much darker
    dark = drift.compare(ref, _features(x_like * 0.3, like_shapes))
    # Then the intensity features are flagged and the sizes are not
    assert "intensity_mean" in dark["flagged"] and not {"width", "height", "aspect_ratio"} & set(dark["flagged"])
    assert dark["features"]["intensity_mean"]["psi"] > 1
    # When a night comes from a different scanner size (larger, not square)
    x_big, big_shapes = _decoded(tmp_path / "big", 60, size=200, seed=3)
    big_shapes[:, 1] = 260  # wider than tall: the aspect ratio moves too
    big = drift.compare(ref, _features(x_big, big_shapes))
    # Then width, height and aspect ratio are flagged, every image outside the training range
    assert {"width", "height", "aspect_ratio"} <= set(big["flagged"])
    assert big["features"]["width"]["out_of_range_share"] == 1.0


def test_trained_xray_artifact_stores_the_drift_reference(xray_artifact):
    with zipfile.ZipFile(xray_artifact) as zf:
        meta = json.loads(zf.read("meta.json"))
    ref = meta["drift_reference"]
    assert ref["format"] == drift.REFERENCE_FORMAT
    assert set(ref["features"]) == set(xray.INPUT_FEATURES)
    assert ref["features"]["width"]["n"] == meta["metrics"]["n_train"]
    assert ref["scores"]["n"] == meta["metrics"]["test"]["n"]


def test_old_xray_artifact_without_reference_gives_no_drift_block_and_no_error(xray_artifact, sqlite_url, tmp_path):
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.db.tables import Job
    from medbatch.jobs import job_status
    from medbatch.pipeline.drift import finalize_job
    from tests.helpers import register_xray

    # Given an X-ray artifact written before drift references existed (same weights, no drift_reference)
    old = tmp_path / "old" / xray_artifact.name
    old.parent.mkdir()
    with zipfile.ZipFile(xray_artifact) as src, zipfile.ZipFile(old, "w", zipfile.ZIP_STORED) as dst:
        meta = json.loads(src.read("meta.json"))
        meta.pop("drift_reference")
        dst.writestr("model.keras", src.read("model.keras"))
        dst.writestr("meta.json", json.dumps(meta))
    version = register_xray(sqlite_url, old)
    with session_scope(sqlite_url) as s:
        job = Job(workload="xray", status="completed", model_name="xray", model_version=version)
        s.add(job)
        s.flush()
        job_id = job.id
    # When the finished job is measured (as its worker, then `medbatch status`, would)
    assert finalize_job(sqlite_url, job_id) == {}
    # Then it is measured once, with no drift block and no error
    with session_scope(sqlite_url) as s:
        assert repo.get_job(s, job_id).metrics == {}
    assert job_status(sqlite_url, job_id, measure_missing=True)["drift"] is None


def test_xray_job_measured_after_its_worker_reads_meta_json_without_loading_the_model(
    xray_artifact, sqlite_url, tmp_path, monkeypatch
):
    from medbatch.db.session import session_scope
    from medbatch.db.tables import Job
    from medbatch.errors import ModelMisconfigured
    from medbatch.ml import artifacts, registry
    from medbatch.pipeline.drift import finalize_job
    from tests.helpers import register_xray

    def no_tensorflow():
        raise AssertionError("TensorFlow imported to read a drift reference")

    # Given a finished X-ray job whose model is not loaded in this process (`medbatch status`, nightly)
    version = register_xray(sqlite_url, xray_artifact)
    registry.clear_cache()
    monkeypatch.setattr(artifacts, "tf_module", no_tensorflow)
    with session_scope(sqlite_url) as s:
        jobs = [Job(workload="xray", status="completed", model_name="xray", model_version=version) for _ in "ab"]
        s.add_all(jobs)
        s.flush()
        first, second = (j.id for j in jobs)
    # When it is measured
    metrics = finalize_job(sqlite_url, first)
    # Then the drift block is measured against meta.json's reference (none gives {}), with no model loaded
    assert metrics["drift"]["available"] is True and metrics["drift"]["n"] == 0
    assert registry.cached("xray", version) is None
    # When the artifact's bytes no longer hash to the registered version
    tampered = bytearray(xray_artifact.read_bytes())
    tampered[-1] ^= 1
    monkeypatch.setattr(registry, "resolve_uri", lambda uri: tmp_path / "tampered.zip")
    (tmp_path / "tampered.zip").write_bytes(bytes(tampered))
    # Then nothing in it is trusted
    with pytest.raises(ModelMisconfigured, match="changed or tampered"):
        finalize_job(sqlite_url, second)
