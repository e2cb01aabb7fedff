"""``medbatch train risk|treatment|xray|molecules`` and ``medbatch models``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medbatch.cli._common import (
    AsJson,
    app,
    err,
    out,
    ready_db,
    with_exit_codes,
)
from medbatch.config import get_settings
from medbatch.errors import InvalidInput
from medbatch.progress import epoch_progress

ModelChoice = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="Force one candidate instead of choosing: logistic_regression, random_forest, hist_gradient_boosting.",
    ),
]
CvFolds = Annotated[int | None, typer.Option(min=2, max=20, help="Cross-validation folds [default: 5].")]
Activate = Annotated[
    bool, typer.Option("--activate/--no-activate", help="Make it the active model (unless worse than the active one).")
]
Force = Annotated[bool, typer.Option("--force", help="Activate even when its held-out metric is worse.")]
OutDir = Annotated[Path | None, typer.Option("--out", help="Where to save the artifact [MEDBATCH_MODEL_DIR].")]
Seed = Annotated[int, typer.Option(help="Random seed.")]


def _dataset_help(name: str) -> str:
    from medbatch.training import DATASETS

    return (
        "Train on a built-in dataset instead of a CSV (the default without one): "
        + "; ".join(f"{k}, {v}" for k, v in DATASETS[name].items())
        + "."
    )


train_app = typer.Typer(help="Train a model, evaluate it on held-out data and register it.", no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("risk")
@with_exit_codes
def train_risk(
    csv_file: Annotated[
        Path | None, typer.Argument(help="CSV with the risk input columns and a target column.")
    ] = None,
    target: Annotated[str, typer.Option(help="Outcome column (0/1).")] = "outcome",
    dataset: Annotated[str | None, typer.Option(help=_dataset_help("risk"))] = None,
    out_dir: OutDir = None,
    seed: Seed = 0,
    model: ModelChoice = None,
    cv_folds: CvFolds = None,
    activate: Activate = True,
    force: Force = False,
) -> None:
    """Fit candidates, pick the champion by CV AUC, calibrate it, evaluate it held out and register it."""
    _train(
        "risk", csv_file, target, dataset or (_default_dataset("risk") if csv_file is None else None), out_dir, seed,
        model=model, cv_folds=cv_folds, activate=activate, force=force,
    )


@train_app.command("treatment")
@with_exit_codes
def train_treatment(
    csv_file: Annotated[
        Path | None, typer.Argument(help="CSV with the treatment input columns and a plan column.")
    ] = None,
    target: Annotated[str, typer.Option(help="Plan label column (any number of classes).")] = "outcome",
    dataset: Annotated[str | None, typer.Option(help=_dataset_help("treatment"))] = None,
    out_dir: OutDir = None,
    seed: Seed = 0,
    model: ModelChoice = None,
    cv_folds: CvFolds = None,
    activate: Activate = True,
    force: Force = False,
) -> None:
    """Fit candidates (the article's RandomForest among them), pick the champion by CV AUC, calibrate it,
    evaluate it held out and register it."""
    _train(
        "treatment", csv_file, target, dataset or (_default_dataset("treatment") if csv_file is None else None),
        out_dir, seed,
        model=model, cv_folds=cv_folds, activate=activate, force=force,
    )


@train_app.command("xray")
@with_exit_codes
def train_xray(
    data_dir: Annotated[
        Path, typer.Argument(help="The chest_xray folder: train/NORMAL, train/PNEUMONIA, optional val/ and test/.")
    ],
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs (early stopping on validation AUC).")] = 10,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per training step.")] = 32,
    input_size: Annotated[int, typer.Option(min=32, max=1024, help="Square input side in pixels.")] = 150,
    filters: Annotated[str, typer.Option(help="Conv filters per block, comma-separated.")] = "32,64,128",
    dense_units: Annotated[int, typer.Option(min=1, help="Units of the dense layer.")] = 512,
    learning_rate: Annotated[float, typer.Option(min=1e-6, help="Adam learning rate.")] = 1e-3,
    threshold: Annotated[
        str, typer.Option(help="youden (chosen on validation data) or a fixed probability such as 0.5.")
    ] = "youden",
    holdout: Annotated[
        float, typer.Option(min=0.05, max=0.5, help="Share of train held out when val/ or test/ is missing or tiny.")
    ] = 0.15,
    augment: Annotated[bool, typer.Option(help="Random rotation, shift, zoom and contrast while training.")] = True,
    out_dir: OutDir = None,
    seed: Seed = 0,
    activate: Activate = True,
    force: Force = False,
) -> None:
    """Train the article's X-ray CNN, report held-out AUC/sensitivity/specificity and register it."""
    from medbatch import training
    from medbatch.ml import xray

    url = ready_db()
    try:
        config = xray.XrayConfig(
            input_size=input_size,
            filters=tuple(int(f) for f in filters.split(",") if f.strip()),
            dense_units=dense_units,
            learning_rate=learning_rate,
            batch_size=batch_size,
            epochs=epochs,
            augment=augment,
        )
        chosen: str | float = threshold if threshold == "youden" else float(threshold)
    except ValueError:
        raise InvalidInput(
            f"--filters takes integers like 32,64,128, --threshold youden or 0..1 (got {filters!r}, {threshold!r})"
        ) from None
    if not isinstance(chosen, str) and not 0 < chosen < 1:
        raise InvalidInput("--threshold must be between 0 and 1 (or youden)")
    with epoch_progress(err, "training") as progress:
        done = training.train_xray(
            url,
            data_dir,
            model_dir=Path(out_dir or get_settings().model_dir),
            config=config,
            seed=seed,
            holdout_fraction=holdout,
            threshold=chosen,
            threads=get_settings().imaging_decode_threads,
            log=_say,
            progress=progress,
            activate=activate,
            force=force,
        )
    _report_xray(done)


def _say(message: str) -> None:
    """A training line on stderr; a small-sample warning in yellow."""
    style = "yellow" if message.startswith("WARNING:") else None
    err.print(message, highlight=False, style=style)


def _report_xray(done) -> None:
    trained, path, version, card = done.trained, done.path, done.version, done.card
    test = trained.meta["metrics"]["test"]
    err.print(f"saved {path} (version {version}), {_registered(done)}; card {card}", highlight=False)
    out.print_json(
        json.dumps(
            {
                "name": "xray",
                "version": version,
                "activated": done.activated,
                "artifact": str(path),
                "threshold": trained.meta["threshold"],
                "held_out_test": test,
                "splits": trained.meta["training_data"]["splits"],
                "notes": trained.meta["training_data"]["notes"],
            },
            default=str,
        )
    )


@train_app.command("molecules")
@with_exit_codes
def train_molecules(
    subset: Annotated[
        int, typer.Option(min=0, help="MOSES training SMILES to use, a seeded random subset (0 = all 1.58M).")
    ] = 280_000,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the subset.")] = 1,
    units: Annotated[int, typer.Option(min=8, help="LSTM units per layer.")] = 256,
    layers: Annotated[int, typer.Option(min=1, max=6, help="LSTM layers.")] = 2,
    learning_rate: Annotated[float, typer.Option(min=1e-6, help="Adam learning rate (cosine decay).")] = 2e-3,
    batch_size: Annotated[int, typer.Option(min=1, help="SMILES per training step.")] = 128,
    eval_samples: Annotated[
        int, typer.Option(min=0, help="Molecules sampled after training to measure the MOSES metrics.")
    ] = 10_000,
    time_budget_min: Annotated[
        float | None, typer.Option(help="Stop training after this many minutes (recorded; not reproducible).")
    ] = None,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(
            help="Save weights, optimizer and position here every 5 minutes and each epoch; "
            "running the same command again resumes from there."
        ),
    ] = None,
    out_dir: OutDir = None,
    seed: Annotated[int, typer.Option(help="Random seed (subset, weights, evaluation samples).")] = 0,
    activate: Activate = True,
    force: Force = False,
) -> None:
    """Train the SMILES CharRNN on the MOSES training set, measure it (MOSES metrics) and register it."""
    from medbatch import training
    from medbatch.ml import molecules

    url = ready_db()
    with epoch_progress(err, "training") as progress:
        done = training.train_molecules(
            url,
            model_dir=Path(out_dir or get_settings().model_dir),
            config=molecules.MolConfig(units=units, layers=layers, learning_rate=learning_rate, batch_size=batch_size),
            subset=subset or None,
            epochs=epochs,
            seed=seed,
            eval_samples=eval_samples,
            time_budget_s=None if time_budget_min is None else time_budget_min * 60,
            checkpoint_dir=checkpoint_dir,
            log=_say,
            progress=progress,
            activate=activate,
            force=force,
        )
    trained, path, version, card = done.trained, done.path, done.version, done.card
    err.print(f"saved {path} (version {version}), {_registered(done)}; card {card}", highlight=False)
    out.print_json(
        json.dumps(
            {
                "name": "molecules",
                "version": version,
                "activated": done.activated,
                "artifact": str(path),
                "metrics": trained.meta["metrics"],
                "reference_moses_charrnn": molecules.MOSES_CHARRNN,
            },
            default=str,
        )
    )


def _default_dataset(name: str) -> str:
    from medbatch.training import DATASETS

    return next(iter(DATASETS[name]))


def _registered(done) -> str:
    return f"registered as the active {done.name} model" if done.activated else done.note


def _train(
    name: str,
    csv_file: Path | None,
    target: str,
    dataset: str | None,
    out_dir: Path | None,
    seed: int,
    *,
    model: str | None = None,
    cv_folds: int | None = None,
    activate: bool = True,
    force: bool = False,
) -> None:
    from medbatch import training

    url = ready_db()
    done = training.train_tabular(
        url,
        name,
        model_dir=Path(out_dir or get_settings().model_dir),
        csv_file=csv_file,
        target=target,
        dataset=dataset,
        seed=seed,
        log=err.print,
        model=model,
        cv_folds=cv_folds,
        activate=activate,
        force=force,
    )
    trained, path, version = done.trained, done.path, done.version
    m = trained.metrics
    gov = m.get("governance", {})
    err.print(f"saved {path} (version {version}), {_registered(done)}", highlight=False)
    err.print(
        f"champion {gov.get('champion')} ({gov.get('calibration', {}).get('method')} calibration); "
        f"model card: {done.card}",
        highlight=False,
    )
    headline = ("auc", "accuracy", "balanced_accuracy", "brier", "ece", "sensitivity", "specificity")
    summary = {
        "name": name,
        "version": version,
        "activated": done.activated,
        "note": done.note or None,
        "artifact": str(path),
        "n_train": m.get("n_train"),
        "n_test": m.get("n_test"),
        "champion": gov.get("champion"),
        "calibration": gov.get("calibration", {}).get("method"),
        "held_out": {k: m.get("model", {}).get(k) for k in headline if k in m.get("model", {})},
        "candidates": {
            k: {"cv_auc": c["cv_auc_train"]["mean"], "heldout_auc": c["heldout_auc"], "heldout_ece": c["heldout_ece"]}
            for k, c in m.get("candidates", {}).items()
        },
        "baseline": {k: m.get("baseline", {}).get(k) for k in ("description", "auc", "accuracy")},
        "winner_by_heldout_auc": m.get("winner_by_heldout_auc"),
    }
    out.print_json(json.dumps(summary, default=str))


models_app = typer.Typer(
    help="The model registry: list versions (default), activate one, roll back.", invoke_without_command=True
)
app.add_typer(models_app, name="models")


def _headline(name: str, metrics: dict) -> dict:
    """The key held-out figures of a version, for ``medbatch models``."""
    from medbatch import training

    label, value = training.key_metric(name, metrics)
    m = metrics.get("model") or metrics.get("test") or {}
    out_: dict = {"key_metric": label, "value": value}
    for k in ("auc", "brier", "ece", "sensitivity", "specificity"):
        v = m.get(k, (m.get("at_threshold") or {}).get(k))
        if v is not None:
            out_[k] = v
    if metrics.get("governance"):
        out_["champion"] = metrics["governance"].get("champion")
    return out_


@models_app.callback()
@with_exit_codes
def models(ctx: typer.Context, as_json: AsJson = False) -> None:
    """List registered models with their key held-out metrics (the active one is used by new jobs)."""
    if ctx.invoked_subcommand is not None:
        return
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope
    from medbatch.reviews import agreement_text

    with session_scope(ready_db()) as s:
        agreement = repo.review_agreement(s)
        rows = [
            {
                "name": m.name,
                "version": m.version,
                "active": m.active,
                "uri": m.uri,
                "training_source": m.training_source,
                "created_at": m.created_at.isoformat(),
                "held_out": _headline(m.name, m.metrics or {}),
                "reviews": agreement.get((m.name, m.version), {"reviewed": 0}),
            }
            for m in repo.list_models(s)
        ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("name", "version", "active", "held-out", "reviewers", "uri", "trained on")
    for r in rows:
        h = r["held_out"]
        shown = ", ".join(f"{k} {h[k]:.3f}" for k in ("auc", "ece", "brier") if isinstance(h.get(k), float))
        if not shown and h.get("value") is not None:
            shown = f"{h['key_metric']} {h['value']:.3f}"
        table.add_row(
            r["name"], r["version"], "yes" if r["active"] else "", shown, agreement_text(r["reviews"]), r["uri"],
            r["training_source"],
        )
    out.print(table)


@models_app.command("activate")
@with_exit_codes
def models_activate(
    name: Annotated[str, typer.Argument(help="Model name: risk, treatment, xray, molecules.")],
    version: Annotated[str, typer.Argument(help="A registered version (see `medbatch models`).")],
) -> None:
    """Make a registered version the one new jobs use (recorded in the audit log)."""
    from medbatch import training

    previous = training.activate_version(ready_db(), name, version)
    err.print(f"{name} {version} is now active (was {previous or 'none'})", highlight=False)


@models_app.command("rollback")
@with_exit_codes
def models_rollback(name: Annotated[str, typer.Argument(help="Model name.")]) -> None:
    """Re-activate the version that was active before the last change (recorded in the audit log)."""
    from medbatch import training

    now, was = training.rollback(ready_db(), name)
    err.print(f"{name} rolled back to {now} (was {was or 'none'})", highlight=False)
