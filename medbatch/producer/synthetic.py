"""Synthetic patient records, plainly labelled as such: for the demo, tests and benchmarks only.

Values are drawn from rough adult distributions; they describe no real person. ``bad_fraction`` of
the rows carry a realistic mistake (missing value, text in a number column, implausible value).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from medbatch.producer.records import SCHEMAS

_BAD_VALUES = ["", "abc", "-5", "999", "n/a"]


def write_patients(
    path: Path, workload: str, n: int, *, seed: int = 0, bad_fraction: float = 0.0, chunk: int = 200_000
) -> Path:
    """Write ``n`` synthetic patients for ``workload`` (with a ``patient_id`` column) to ``path``.

    Generated in chunks, so a million rows need little memory.
    """
    rng = np.random.default_rng(seed)
    columns = [c.name for c in SCHEMAS[workload]]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", *columns])
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            cols = {
                "age": rng.integers(25, 85, m),
                "bmi": np.round(rng.normal(26.5, 4.5, m).clip(15, 55), 1),
                "exercise_frequency": rng.poisson(2.0, m).clip(0, 14),
                "smoking_history": np.where(rng.random(m) < 0.35, rng.integers(1, 40, m), 0),
                "blood_pressure": rng.normal(132, 20, m).round().clip(85, 240).astype(int),
                "cholesterol": rng.normal(236, 44, m).round().clip(110, 600).astype(int),
                "diabetes": (rng.random(m) < 0.08).astype(int),
            }
            table = np.column_stack([cols[c].astype(object) for c in columns])
            bad = rng.random(m) < bad_fraction
            for i in np.flatnonzero(bad):
                table[i, rng.integers(0, len(columns))] = _BAD_VALUES[rng.integers(0, len(_BAD_VALUES))]
            ids = [f"SYN-{start + i + 1:07d}" for i in range(m)]
            writer.writerows([ids[i], *table[i]] for i in range(m))
    return path
