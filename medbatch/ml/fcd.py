"""FCD/Test: the Fréchet ChemNet Distance of generated molecules to the MOSES test set, as MOSES computes it.

Evaluation only: used by ``bench/molecules.py`` and when a molecule model is trained (its card), never
by workers. It needs the ``eval`` extra (``fcd_torch``, which brings PyTorch and the benchmark's own
ChemNet weights); without it :func:`fcd_unavailable` says why and callers report FCD as not computed.

The reference statistics (ChemNet activations' mean and covariance over the 176,074 molecules of the
MOSES test split) are the benchmark's own: ``moses/dataset/data/test_stats.npz`` of molsets 0.3.1,
key ``FCD``, re-saved as plain arrays in ``medbatch/models/moses_test_fcd.npz`` (loaded with
``allow_pickle=False``; the original is a pickle). A test checks them against molsets when it is installed.
As in MOSES, only the valid generated molecules count, canonicalised by ChemNet's own preprocessing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np

from medbatch.ml.moses import SHIPPED_DIR

MOSES_TEST_FCD = SHIPPED_DIR / "moses_test_fcd.npz"
#: The MOSES paper's CharRNN, FCD/Test (table 2), beside :data:`medbatch.ml.moses.MOSES_CHARRNN`.
MOSES_CHARRNN_FCD_TEST = 0.073
EXTRA_HINT = "pip install 'medbatch[eval]' (with a CPU build of torch: see docs/models.md)"


def fcd_unavailable() -> str | None:
    """Why FCD cannot be computed here (a sentence), or None when it can."""
    missing = [m for m in ("torch", "fcd_torch") if importlib.util.find_spec(m) is None]
    if missing:
        return f"FCD needs {' and '.join(missing)}: {EXTRA_HINT}"
    if not MOSES_TEST_FCD.exists():
        return f"FCD reference statistics missing: {MOSES_TEST_FCD}"
    return None


def reference_stats() -> dict[str, np.ndarray]:
    with np.load(MOSES_TEST_FCD, allow_pickle=False) as data:
        return {"mu": data["mu"], "sigma": data["sigma"]}


def fcd_test(valid_smiles: Sequence[str], *, threads: int | None = None) -> float:
    """FCD between ``valid_smiles`` (at least 2) and the MOSES test set. Lower is closer; MOSES CharRNN: 0.073.

    Raises:
        ValueError: fewer than 2 molecules, or the ``eval`` extra is missing (see :func:`fcd_unavailable`).
    """
    why = fcd_unavailable()
    if why:
        raise ValueError(why)
    if len(valid_smiles) < 2:
        raise ValueError(f"FCD needs at least 2 valid molecules (got {len(valid_smiles)})")
    import torch
    from fcd_torch import FCD

    if threads:
        torch.set_num_threads(threads)
    fcd = FCD(device="cpu", n_jobs=1, batch_size=512)
    return round(float(fcd(pref=reference_stats(), gen=list(valid_smiles))), 4)


def fcd_block(valid_smiles: Sequence[str], *, samples: int) -> dict:
    """FCD/Test of the valid molecules of a sample of ``samples`` strings, as a card's keys (with the sample's
    size, so the card says what the figure rests on); ``{"fcd_test": None, "fcd_note": why}`` where FCD cannot
    be computed here.

    At n = 10,000, 10,000 molecules drawn from the MOSES test set itself measure about 0.12 (and from
    its training set about 0.13): that is the floor of the estimate at this size, not 0.
    """
    why = fcd_unavailable()
    if why:
        return {"fcd_test": None, "fcd_note": why}
    if len(valid_smiles) < 2:
        return {"fcd_test": None, "fcd_note": f"only {len(valid_smiles)} valid molecules in {samples:,} samples"}
    return {
        "fcd_test": fcd_test(valid_smiles),
        "fcd_samples": samples,
        "fcd_valid": len(valid_smiles),
        "fcd_note": "FCD/Test over the valid molecules of the evaluation sample; 10k molecules of the MOSES test "
        "set itself measure about 0.12 at this size (MOSES CharRNN: 0.073 at 30k)",
    }
