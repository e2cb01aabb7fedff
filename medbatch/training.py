"""Application service for training: train -> save (versioned, hashed) -> model card -> register -> audit.

``medbatch train ...`` and the demo call these; the model code itself stays in ``medbatch/ml/`` (which knows
no SQL), the registry rows in ``medbatch/db/repository``. Each function returns a :class:`Registered` naming
the artifact, its version and card, with the trained object for the caller to report on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medbatch.errors import InvalidInput

Log = Callable[[str], object]


@dataclass(frozen=True)
class Registered:
    """A trained model saved as ``path`` (version = its content hash) and registered under ``name``."""

    name: str
    version: str
    path: Path
    card: Path
    trained: Any


def register_trained(
    database_url: str,
    name: str,
    path: Path,
    metrics: dict,
    source: str,
    *,
    activate: bool = True,
) -> str:
    """Register a freshly saved artifact as a ``name`` model (the active one unless ``activate`` is false) and
    audit the training; returns its version."""
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.ml import registry
    from medbatch.producer.identity import whoami

    version = registry.file_version(path)
    with session_scope(database_url) as s:
        repo.register_model(
            s,
            name=name,
            version=version,
            uri=str(path.resolve()),
            metrics=metrics,
            training_source=source,
            activate=activate,
        )
        repo.audit(s, actor=whoami(), action="train", detail={"model": name, "version": version, "source": source})
    return version


def train_tabular(
    database_url: str,
    name: str,
    *,
    model_dir: Path,
    csv_file: Path | None = None,
    target: str = "outcome",
    dataset: str | None = None,
    seed: int = 0,
    log: Log = lambda _m: None,
) -> Registered:
    """Train the ``risk`` or ``treatment`` model on ``csv_file`` (or a built-in ``dataset``) and register it."""
    from medbatch.ml import registry, tabular

    if csv_file is not None:
        frame = tabular.load_training_csv(csv_file, name, target)
        source = str(csv_file.resolve())
    else:
        loaders = {"nhefs": tabular.load_nhefs, "framingham": tabular.load_framingham}
        if dataset not in loaders:
            raise InvalidInput(f"unknown dataset {dataset!r}; choose {', '.join(loaders)} or give a CSV")
        frame, source = loaders[dataset](), dataset
    log(f"training {name} on {len(frame)} rows from {source} ...")
    trainer = tabular.train_risk if name == "risk" else tabular.train_treatment
    trained = trainer(frame, seed=seed)
    path = registry.save_versioned(
        lambda d: tabular.save_model(trained, d, training_source=source), Path(model_dir), name
    )
    version = register_trained(database_url, name, path, trained.metrics, source)
    return Registered(name, version, path, path.with_suffix(".card.md"), trained)


def train_xray(
    database_url: str,
    data_dir: Path,
    *,
    model_dir: Path,
    config,
    seed: int = 0,
    holdout_fraction: float | None = None,
    threshold: str | float = "youden",
    threads: int | None = None,
    log: Log | None = None,
    stem: str = "xray",
    training_source: str | None = None,
    activate: bool = True,
) -> Registered:
    """Train the X-ray CNN on ``data_dir`` and register it as an ``xray`` model (the artifact named ``stem``;
    the training source is the data folder unless ``training_source`` says otherwise)."""
    from medbatch.ml import registry, xray

    options: dict[str, Any] = {"config": config, "seed": seed, "threshold": threshold}
    if holdout_fraction is not None:
        options["holdout_fraction"] = holdout_fraction
    if threads is not None:
        options["threads"] = threads
    if log is not None:
        options["log"] = log
    trained = xray.train_xray(data_dir, **options)
    path = registry.save_versioned(
        lambda d: xray.save_model(trained.keras_model, trained.meta, d), Path(model_dir), stem
    )
    card = xray.write_card(trained, path)
    source = training_source or trained.meta["training_data"]["root"]
    version = register_trained(database_url, "xray", path, trained.meta["metrics"], source, activate=activate)
    return Registered("xray", version, path, card, trained)


def train_molecules(
    database_url: str,
    *,
    model_dir: Path,
    config,
    subset: int | None,
    epochs: int,
    seed: int = 0,
    eval_samples: int,
    time_budget_s: float | None = None,
    log: Log = lambda _m: None,
) -> Registered:
    """Train the SMILES CharRNN on (a seeded subset of) the MOSES training set, measure it and register it."""
    from medbatch.ml import molecules, registry

    trained = molecules.train_on_moses(
        subset=subset,
        epochs=epochs,
        seed=seed,
        config=config,
        eval_samples=eval_samples,
        time_budget_s=time_budget_s,
        log=log,
    )
    path = registry.save_versioned(lambda d: molecules.save_model(trained, d), Path(model_dir), "molecules")
    card = molecules.write_card(trained, path)
    version = register_trained(
        database_url, "molecules", path, trained.meta["metrics"], trained.meta["training_source"]
    )
    return Registered("molecules", version, path, card, trained)
