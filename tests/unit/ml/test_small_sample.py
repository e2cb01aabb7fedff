"""A held-out split too small for its figures: the warning the training output and the model card carry."""

from __future__ import annotations

import pytest

from medbatch.ml.evaluation import SMALL_SAMPLE_N, SMALL_SAMPLE_PER_CLASS, small_sample_warning


@pytest.mark.parametrize(
    ("n", "positives", "warned"),
    [
        (6, 3, True),  # the n=6 reported as AUC 1.0
        (SMALL_SAMPLE_N - 1, None, True),
        (SMALL_SAMPLE_N, None, False),
        (200, SMALL_SAMPLE_PER_CLASS - 1, True),  # plenty of rows, too few of one class
        (200, 200 - SMALL_SAMPLE_PER_CLASS + 1, True),
        (200, SMALL_SAMPLE_PER_CLASS, False),
    ],
)
def test_a_small_held_out_split_is_flagged(n, positives, warned):
    warning = small_sample_warning(n, positives)
    assert (warning is not None) == warned
    if warned:
        assert warning.startswith(f"WARNING: AUC on n={n} is not meaningful")
