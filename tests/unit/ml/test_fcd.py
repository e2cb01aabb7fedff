"""FCD/Test: the shipped reference statistics are the MOSES benchmark's own, and the distance behaves."""

from __future__ import annotations

import importlib.util
import io
import pickle
import zipfile

import numpy as np
import pytest

from medbatch.ml import fcd
from medbatch.ml.moses import moses_data_dir, read_moses_smiles


class _NumpyOnly(pickle.Unpickler):
    """Unpickles the benchmark's stats file allowing only what a dict of NumPy arrays needs."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("collections", "Counter"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")
        return super().find_class(module, name)


def test_shipped_fcd_statistics_are_the_moses_test_set_statistics():
    try:
        path = moses_data_dir() / "test_stats.npz"
    except Exception as exc:  # molsets missing: the comparison cannot be made here
        pytest.skip(f"molsets not installed: {exc}")
    buf = io.BytesIO(zipfile.ZipFile(path).read("stats.npy"))
    np.lib.format.read_magic(buf)
    np.lib.format.read_array_header_1_0(buf)
    stats = _NumpyOnly(buf, encoding="latin1").load().item()["FCD"]
    shipped = fcd.reference_stats()
    np.testing.assert_array_equal(shipped["mu"], stats["mu"])
    np.testing.assert_array_equal(shipped["sigma"], stats["sigma"])
    assert shipped["sigma"].shape == (512, 512)


@pytest.mark.skipif(importlib.util.find_spec("fcd_torch") is None, reason="the eval extra (fcd_torch) is not installed")
def test_fcd_is_lower_for_test_like_molecules_than_for_a_narrow_set():
    test = read_moses_smiles("test")
    rng = np.random.default_rng(0)
    drawn = [test[i] for i in rng.choice(len(test), 1500, replace=False)]
    narrow = [f"C{'C' * (i % 12)}O" for i in range(200)]  # alcohols only: far from drug-like space
    close, far = fcd.fcd_test(drawn), fcd.fcd_test(narrow)
    assert 0 < close < far
    assert far > 10 * close


def test_without_the_eval_extra_fcd_is_reported_as_not_computed_with_the_extra_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(fcd.importlib.util, "find_spec", lambda name: None if name == "fcd_torch" else real(name))
    why = fcd.fcd_unavailable()
    assert why is not None and "fcd_torch" in why and "medbatch[eval]" in why
    assert fcd.fcd_block(["CCO", "c1ccccc1"], samples=2) == {"fcd_test": None, "fcd_note": why}
    with pytest.raises(ValueError, match="medbatch\\[eval\\]"):
        fcd.fcd_test(["CCO", "c1ccccc1"])
