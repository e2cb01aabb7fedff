"""Training the CharRNN by teacher forcing, and the end-to-end run on a seeded MOSES subset."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medbatch.errors import InvalidInput
from medbatch.ml import chem
from medbatch.ml.artifacts import atomic_write, tf_module
from medbatch.ml.molecules.artifact import ARTIFACT_FORMAT
from medbatch.ml.molecules.model import MolConfig, MoleculeGenerator, build_model
from medbatch.ml.molecules.tokens import Vocabulary
from medbatch.ml.moses import read_moses_smiles


def sample_subset(smiles: Sequence[str], n: int | None, seed: int) -> list[str]:
    """A seeded random subset of ``n`` SMILES (all of them, shuffled, when ``n`` is None or too big)."""
    order = np.random.default_rng(seed).permutation(len(smiles))
    if n is not None:
        order = order[:n]
    return [smiles[i] for i in order]


def encode_all(vocab: Vocabulary, smiles: Sequence[str]) -> tuple[list[list[int]], int]:
    """Encode what the vocabulary covers; returns (encoded, how many were skipped)."""
    out, skipped = [], 0
    for s in smiles:
        try:
            out.append(vocab.encode(s))
        except InvalidInput:
            skipped += 1
    return out, skipped


def pack(encoded: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Encoded SMILES as one 0-padded ``uint8`` matrix and their lengths (1.58M SMILES: ~150 MB, not ~1 GB of lists)."""
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int32, count=len(encoded))
    out = np.zeros((len(encoded), int(lengths.max()) if len(encoded) else 0), dtype=np.uint8)
    for i, e in enumerate(encoded):
        out[i, : len(e)] = e
    return out, lengths


def epoch_batches(
    tokens: np.ndarray, lengths: np.ndarray, batch_size: int, *, seed: int, epoch: int, start: int = 0
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One epoch of length-bucketed batches ``(inputs, targets, weights)``, padded to a multiple of 8 tokens.

    The order is a pure function of ``(seed, epoch)``: molecules of equal length are shuffled before
    bucketing (so a batch's members change from epoch to epoch) and the buckets are visited in a
    random order. ``start`` skips that many batches without building them, so a resumed run sees
    exactly the batches the interrupted one had not yet seen.
    """
    rng = np.random.default_rng([seed, epoch])
    order = np.lexsort((rng.random(len(lengths)), lengths))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for k in rng.permutation(len(chunks))[start:]:
        idx = chunks[k]
        width = -(-int(lengths[idx].max()) // 8) * 8 + 1
        arr = np.zeros((len(idx), width), dtype=np.int32)
        take = min(width, tokens.shape[1])
        arr[:, :take] = tokens[idx, :take]
        targets = arr[:, 1:]
        yield arr[:, :-1], targets, (targets != 0).astype(np.float32)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


@dataclass
class TrainedGenerator:
    keras_model: Any
    vocab: Vocabulary
    config: MolConfig
    meta: dict[str, Any] = field(default_factory=dict)


def train_generator(
    smiles: Sequence[str],
    *,
    config: MolConfig,
    seed: int = 0,
    validation: Sequence[str] = (),
    time_budget_s: float | None = None,
    checkpoint_dir: Path | None = None,
    checkpoint_every_s: float = 300.0,
    log: Callable[[str], None] = lambda m: None,
    progress: Callable[[int, int, int, int], None] | None = None,
) -> TrainedGenerator:
    """Train the CharRNN on ``smiles`` by teacher forcing (cross-entropy on the next token).

    Seeded (Python, NumPy and TensorFlow): the same data, seed and machine give the same weights.
    ``validation`` SMILES (held out) are scored after each epoch as mean negative log-likelihood per
    token. ``time_budget_s`` stops training early (between steps) and says so in ``meta``: useful on a
    CPU, not reproducible.

    ``checkpoint_dir``: every ``checkpoint_every_s`` seconds and at the end of every epoch, the weights,
    the optimizer's state and the position in the data are written there (atomically); a run started
    again with the same data, configuration and seed resumes from the last checkpoint instead of
    starting over (a different run in the same folder is refused). The learning-rate schedule and the
    batch order depend only on the step, so a resumed run continues the same schedule.

    Raises:
        InvalidInput: no SMILES to train on, or a checkpoint folder that holds another run.
    """
    if not smiles:
        raise InvalidInput("no SMILES to train on")
    tf = tf_module()
    import keras

    keras.utils.set_random_seed(seed)
    vocab = Vocabulary.build(smiles)
    encoded, _ = encode_all(vocab, smiles)
    tokens, lengths = pack(encoded)
    del encoded
    held, skipped_val = encode_all(vocab, validation)
    held_tokens, held_lengths = pack(held) if held else (None, None)
    model = build_model(vocab.size, config)
    per_epoch = steps_per_epoch(len(lengths), config.batch_size)
    total_steps = max(1, per_epoch * config.epochs)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=total_steps, alpha=0.1)
    optimizer = keras.optimizers.Adam(schedule, clipnorm=config.clipnorm)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    spec = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None, None], tf.int32)]

    @tf.function(input_signature=[*spec, tf.TensorSpec([None, None], tf.float32)], reduce_retracing=True)
    def train_step(x, y, w):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = loss_fn(y, logits, sample_weight=w) / tf.reduce_sum(w)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    @tf.function(input_signature=[*spec, tf.TensorSpec([None, None], tf.float32)], reduce_retracing=True)
    def eval_step(x, y, w):
        return loss_fn(y, model(x, training=False), sample_weight=w)

    def nll() -> float | None:
        if held_tokens is None:
            return None
        total, count = 0.0, 0.0
        for x, y, w in epoch_batches(held_tokens, held_lengths, 512, seed=0, epoch=0):
            total += float(eval_step(x, y, w))
            count += float(w.sum())
        return round(total / count, 4)

    run = {
        "seed": seed,
        "config": asdict(config),
        "vocab": list(vocab.tokens),
        "n_train": int(len(lengths)),
        "data_sha256": _data_digest(smiles),
    }
    checkpoint = _Checkpoint(Path(checkpoint_dir), run) if checkpoint_dir is not None else None
    state = {"epoch": 0, "step": 0, "losses": [], "history": [], "elapsed_s": 0.0}
    if checkpoint is not None and (saved := checkpoint.load(model, optimizer)) is not None:
        state = saved
        log(
            f"resuming from {checkpoint.directory}: epoch {state['epoch'] + 1}/{config.epochs}, "
            f"step {state['step']}/{per_epoch} ({state['elapsed_s']:.0f}s trained before)"
        )
    started = time.monotonic() - state["elapsed_s"]
    last_saved = time.monotonic()
    history: list[dict[str, Any]] = state["history"]
    stopped_early = False

    def elapsed() -> float:
        return round(time.monotonic() - started, 1)

    for epoch in range(state["epoch"], config.epochs):
        first = state["step"] if epoch == state["epoch"] else 0
        losses: list[float] = state["losses"] if epoch == state["epoch"] else []
        step = first
        for step, (x, y, w) in enumerate(
            epoch_batches(tokens, lengths, config.batch_size, seed=seed, epoch=epoch, start=first), start=first
        ):
            losses.append(float(train_step(x, y, w)))
            if progress is not None:  # (epoch, epochs, step, steps): a bar on a terminal
                progress(epoch + 1, config.epochs, step + 1, per_epoch)
            if step % 200 == 0:
                log(
                    f"epoch {epoch + 1}/{config.epochs} step {step}/{per_epoch} "
                    f"loss {np.mean(losses[-200:]):.3f} ({elapsed():.0f}s)"
                )
            if checkpoint is not None and time.monotonic() - last_saved > checkpoint_every_s:
                checkpoint.save(
                    model, optimizer, epoch=epoch, step=step + 1, losses=losses, history=history, elapsed_s=elapsed()
                )
                last_saved = time.monotonic()
            if time_budget_s is not None and elapsed() > time_budget_s:
                stopped_early = True
                if checkpoint is not None:
                    checkpoint.save(
                        model,
                        optimizer,
                        epoch=epoch,
                        step=step + 1,
                        losses=losses,
                        history=history,
                        elapsed_s=elapsed(),
                    )
                break
        entry = {
            "epoch": epoch + 1,
            "steps": len(losses),
            "train_nll_per_token": round(float(np.mean(losses)), 4) if losses else None,
            "validation_nll_per_token": nll(),
            "elapsed_s": elapsed(),
        }
        history.append(entry)
        log(f"epoch {epoch + 1}: {entry}")
        if stopped_early:
            break
        if checkpoint is not None:
            checkpoint.save(model, optimizer, epoch=epoch + 1, step=0, losses=[], history=history, elapsed_s=elapsed())
            last_saved = time.monotonic()
    meta = {
        "format": ARTIFACT_FORMAT,
        "name": "molecules",
        "architecture": "token-level SMILES CharRNN (Embedding, LSTM x layers, Dense), as the MOSES baseline",
        "config": asdict(config),
        "seed": seed,
        "n_train": int(len(lengths)),
        "n_validation": len(held),
        "validation_skipped_unknown_tokens": skipped_val,
        "vocab_size": vocab.size,
        "parameters": int(model.count_params()),
        "history": history,
        "stopped_by_time_budget": stopped_early,
        "train_seconds": elapsed(),
    }
    return TrainedGenerator(keras_model=model, vocab=vocab, config=config, meta=meta)


def _data_digest(smiles: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for s in smiles:
        digest.update(s.encode())
        digest.update(b"\n")
    return digest.hexdigest()


CHECKPOINT_FORMAT = "medbatch-molecules-checkpoint-1"


def _same_run(saved: dict[str, Any], run: dict[str, Any]) -> bool:
    """The same data, seed, vocabulary and settings; only the number of epochs may differ.

    Asking a finished (or interrupted) run for more epochs continues it: the cosine schedule is stretched
    over the new total, so the learning rate steps back up to where the longer run would be and decays again.
    """

    def without_epochs(r: dict[str, Any]) -> dict[str, Any]:
        return {**r, "config": {k: v for k, v in (r.get("config") or {}).items() if k != "epochs"}}

    return without_epochs(saved) == without_epochs(run)


class _Checkpoint:
    """A training run's resumable state in one folder: ``state.json``, the weights, the optimizer's variables."""

    def __init__(self, directory: Path, run: dict[str, Any]):
        self.directory = directory
        self.run = run

    def save(self, model, optimizer, **state: Any) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        weights = self.directory / "weights.weights.h5"
        tmp = self.directory / "weights.tmp.weights.h5"
        model.save_weights(tmp)
        opt_tmp = self.directory / "optimizer.tmp.npz"
        with opt_tmp.open("wb") as fh:
            np.savez(fh, *[np.asarray(v.numpy()) for v in optimizer.variables])
        os.replace(tmp, weights)
        os.replace(opt_tmp, self.directory / "optimizer.npz")
        body = {"format": CHECKPOINT_FORMAT, "run": self.run, **state}
        atomic_write(self.directory / "state.json", json.dumps(body).encode())

    def load(self, model, optimizer) -> dict[str, Any] | None:
        path = self.directory / "state.json"
        if not path.exists():
            return None
        body = json.loads(path.read_text())
        if body.get("format") != CHECKPOINT_FORMAT or not _same_run(body.get("run") or {}, self.run):
            raise InvalidInput(
                f"{self.directory} holds a checkpoint of another training run (data, settings or seed differ); "
                "use another --checkpoint-dir or delete it"
            )
        if body["epoch"] > self.run["config"]["epochs"]:
            raise InvalidInput(
                f"{self.directory} holds a run already trained for {body['epoch']} epoch(s); ask for at least that many"
            )
        model.load_weights(self.directory / "weights.weights.h5")
        optimizer.build(model.trainable_variables)
        with np.load(self.directory / "optimizer.npz") as saved:
            arrays = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        if len(arrays) != len(optimizer.variables):
            raise InvalidInput(f"{self.directory}: the optimizer state does not fit this model")
        for variable, value in zip(optimizer.variables, arrays, strict=True):
            variable.assign(value)
        return {k: body[k] for k in ("epoch", "step", "losses", "history", "elapsed_s")}


def train_on_moses(
    *,
    subset: int | None = 280_000,
    epochs: int = 1,
    seed: int = 0,
    config: MolConfig | None = None,
    validation_size: int = 5000,
    eval_samples: int = 10_000,
    time_budget_s: float | None = None,
    checkpoint_dir: Path | None = None,
    log: Callable[[str], None] = lambda m: None,
    progress: Callable[[int, int, int, int], None] | None = None,
) -> TrainedGenerator:
    """Train on a seeded subset of the MOSES training SMILES, then measure the generator.

    Held out: mean NLL per token on ``validation_size`` molecules of the MOSES *test* split. Generated:
    ``eval_samples`` strings at temperature 1.0 (seed ``seed``), scored with RDKit and measured with the
    MOSES metrics (:func:`medbatch.ml.chem.evaluate_generator`). Both go into ``meta["metrics"]``.
    """
    config = config or MolConfig()
    if epochs < 1:
        raise InvalidInput("epochs must be at least 1")
    if subset is not None and subset < 1:
        raise InvalidInput("subset must be at least 1 molecule")
    config = MolConfig(**{**asdict(config), "epochs": epochs})
    train = read_moses_smiles("train")
    chosen = sample_subset(train, subset, seed)
    validation = sample_subset(read_moses_smiles("test"), validation_size, seed) if validation_size else []
    log(f"training on {len(chosen):,} of {len(train):,} MOSES training SMILES, {epochs} epoch(s), seed {seed}")
    trained = train_generator(
        chosen,
        config=config,
        seed=seed,
        validation=validation,
        time_budget_s=time_budget_s,
        checkpoint_dir=checkpoint_dir,
        log=log,
        progress=progress,
    )
    generator = MoleculeGenerator(
        name="molecules", version="unsaved", keras_model=trained.keras_model, vocab=trained.vocab, meta=trained.meta
    )
    metrics: dict[str, Any] = {
        "validation_nll_per_token": trained.meta["history"][-1]["validation_nll_per_token"],
        "n_validation": trained.meta["n_validation"],
    }
    if eval_samples:
        log(f"sampling {eval_samples:,} molecules, scoring them with RDKit, FCD/Test where the eval extra is ...")
        metrics["generated"] = chem.evaluate_generator(generator, n=eval_samples, seed=seed, measure_fcd=True)
    trained.meta.update(
        metrics=metrics,
        training_source=(
            f"MOSES training set (molsets {_molsets_version()}, moses/dataset/data/train.csv.gz): "
            f"{len(chosen):,} of {len(train):,} SMILES, seeded subset (seed {seed}); validation: "
            f"{len(validation):,} SMILES of the MOSES test split"
        ),
        subset=subset,
        epochs=epochs,
    )
    return trained


def _molsets_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("molsets")
    except PackageNotFoundError:
        return "unknown"
