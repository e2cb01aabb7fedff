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

train_app = typer.Typer(help="Train a model, evaluate it on held-out data and register it.", no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("risk")
@with_exit_codes
def train_risk(
    csv_file: Annotated[
        Path | None, typer.Argument(help="CSV with the risk input columns and a target column.")
    ] = None,
    target: Annotated[str, typer.Option(help="Outcome column (0/1).")] = "outcome",
    dataset: Annotated[str | None, typer.Option(help="Train on a built-in dataset instead: nhefs.")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where to save the artifact [MEDBATCH_MODEL_DIR].")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train the LogisticRegression risk model, evaluate it on a held-out split and register it."""
    _train("risk", csv_file, target, dataset or ("nhefs" if csv_file is None else None), out_dir, seed)


@train_app.command("treatment")
@with_exit_codes
def train_treatment(
    csv_file: Annotated[
        Path | None, typer.Argument(help="CSV with the treatment input columns and a plan column.")
    ] = None,
    target: Annotated[str, typer.Option(help="Plan label column (any number of classes).")] = "outcome",
    dataset: Annotated[str | None, typer.Option(help="Train on a built-in dataset instead: framingham.")] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where to save the artifact [MEDBATCH_MODEL_DIR].")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train the RandomForest treatment-plan model, evaluate it on a held-out split and register it."""
    _train("treatment", csv_file, target, dataset or ("framingham" if csv_file is None else None), out_dir, seed)


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
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where to save the artifact [MEDBATCH_MODEL_DIR].")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
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
    done = training.train_xray(
        url,
        data_dir,
        model_dir=Path(out_dir or get_settings().model_dir),
        config=config,
        seed=seed,
        holdout_fraction=holdout,
        threshold=chosen,
        threads=get_settings().imaging_decode_threads,
        log=lambda m: err.print(m, highlight=False),
    )
    trained, path, version, card = done.trained, done.path, done.version, done.card
    test = trained.meta["metrics"]["test"]
    err.print(f"saved {path} (version {version}), registered as the active xray model; card {card}")
    out.print_json(
        json.dumps(
            {
                "name": "xray",
                "version": version,
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
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where to save the artifact [MEDBATCH_MODEL_DIR].")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (subset, weights, evaluation samples).")] = 0,
) -> None:
    """Train the SMILES CharRNN on the MOSES training set, measure it (MOSES metrics) and register it."""
    from medbatch import training
    from medbatch.ml import molecules

    url = ready_db()
    done = training.train_molecules(
        url,
        model_dir=Path(out_dir or get_settings().model_dir),
        config=molecules.MolConfig(units=units, layers=layers, learning_rate=learning_rate, batch_size=batch_size),
        subset=subset or None,
        epochs=epochs,
        seed=seed,
        eval_samples=eval_samples,
        time_budget_s=None if time_budget_min is None else time_budget_min * 60,
        log=lambda m: err.print(m, highlight=False),
    )
    trained, path, version, card = done.trained, done.path, done.version, done.card
    err.print(f"saved {path} (version {version}), registered as the active molecules model; card {card}")
    out.print_json(
        json.dumps(
            {
                "name": "molecules",
                "version": version,
                "artifact": str(path),
                "metrics": trained.meta["metrics"],
                "reference_moses_charrnn": molecules.MOSES_CHARRNN,
            },
            default=str,
        )
    )


def _train(name: str, csv_file: Path | None, target: str, dataset: str | None, out_dir: Path | None, seed: int) -> None:
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
    )
    trained, path, version = done.trained, done.path, done.version
    m = trained.metrics
    err.print(f"saved {path} (version {version}), registered as the active {name} model")
    err.print(f"model card: {done.card}")
    headline = ("auc", "accuracy", "balanced_accuracy", "brier", "sensitivity", "specificity")
    summary = {
        "name": name,
        "version": version,
        "artifact": str(path),
        "n_train": m.get("n_train"),
        "n_test": m.get("n_test"),
        "held_out": {k: m.get("model", {}).get(k) for k in headline if k in m.get("model", {})},
        "baseline": {k: m.get("baseline", {}).get(k) for k in ("description", "auc", "accuracy")},
        "winner_by_heldout_auc": m.get("winner_by_heldout_auc"),
    }
    out.print_json(json.dumps(summary, default=str))


@app.command()
@with_exit_codes
def models(as_json: AsJson = False) -> None:
    """List registered models (the active one is used by new jobs)."""
    from medbatch.db import repository as repo
    from medbatch.db.session import session_scope

    with session_scope(ready_db()) as s:
        rows = [
            {
                "name": m.name,
                "version": m.version,
                "active": m.active,
                "uri": m.uri,
                "training_source": m.training_source,
                "created_at": m.created_at.isoformat(),
            }
            for m in repo.list_models(s)
        ]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("name", "version", "active", "uri", "trained on")
    for r in rows:
        table.add_row(r["name"], r["version"], "yes" if r["active"] else "", r["uri"], r["training_source"])
    out.print(table)
