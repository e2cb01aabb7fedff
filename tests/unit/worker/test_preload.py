"""Which models a worker's pool child loads as it starts (``worker/signals.py``)."""

from __future__ import annotations

import pytest

from medbatch.worker.signals import models_to_preload


@pytest.mark.parametrize(
    ("queues", "models"),
    [
        ({"imaging"}, ["xray"]),
        ({"molecules"}, ["molecules"]),
        ({"imaging", "molecules"}, ["xray", "molecules"]),
        ({"tabular"}, []),
        ({"tabular", "imaging"}, []),  # serves patient records too: TensorFlow only when an X-ray batch needs it
        ({"tabular", "imaging", "molecules", "reports", "maintenance"}, []),  # -Q all
        (set(), []),
    ],
)
def test_only_a_worker_of_tensorflow_queues_preloads_their_models(queues, models):
    assert models_to_preload(frozenset(queues)) == models
