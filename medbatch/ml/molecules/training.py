"""Training the CharRNN by teacher forcing, and the end-to-end run on a seeded MOSES subset."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from medbatch.errors import InvalidInput
from medbatch.ml import chem
from medbatch.ml.artifacts import tf_module
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


def _batches(encoded: list[list[int]], batch_size: int, rng: np.random.Generator) -> Iterator[tuple]:
    """Length-bucketed, shuffled batches: ``(inputs, targets, weights)`` padded to a multiple of 8 tokens."""
    order = np.argsort([len(e) for e in encoded], kind="stable")
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for k in rng.permutation(len(chunks)):
        rows = [encoded[j] for j in chunks[k]]
        width = -(-max(len(r) for r in rows) // 8) * 8 + 1
        arr = np.zeros((len(rows), width), dtype=np.int32)
        for i, r in enumerate(rows):
            arr[i, : len(r)] = r
        targets = arr[:, 1:]
        yield arr[:, :-1], targets, (targets != 0).astype(np.float32)


def encode_all(vocab: Vocabulary, smiles: Sequence[str]) -> tuple[list[list[int]], int]:
    """Encode what the vocabulary covers; returns (encoded, how many were skipped)."""
    out, skipped = [], 0
    for s in smiles:
        try:
            out.append(vocab.encode(s))
        except InvalidInput:
            skipped += 1
    return out, skipped


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
    log: Callable[[str], None] = lambda m: None,
) -> TrainedGenerator:
    """Train the CharRNN on ``smiles`` by teacher forcing (cross-entropy on the next token).

    Seeded (Python, NumPy and TensorFlow): the same data, seed and machine give the same weights.
    ``validation`` SMILES (held out) are scored after each epoch as mean negative log-likelihood per
    token. ``time_budget_s`` stops training early (between steps) and says so in ``meta``: useful on a
    CPU, not reproducible.

    Raises:
        InvalidInput: no SMILES to train on.
    """
    if not smiles:
        raise InvalidInput("no SMILES to train on")
    tf = tf_module()
    import keras

    keras.utils.set_random_seed(seed)
    vocab = Vocabulary.build(smiles)
    encoded, _ = encode_all(vocab, smiles)
    held, skipped_val = encode_all(vocab, validation)
    model = build_model(vocab.size, config)
    total_steps = max(1, -(-len(encoded) // config.batch_size) * config.epochs)
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

    def nll(rows: list[list[int]]) -> float | None:
        if not rows:
            return None
        total, count = 0.0, 0.0
        for x, y, w in _batches(rows, 512, np.random.default_rng(0)):
            total += float(eval_step(x, y, w))
            count += float(w.sum())
        return round(total / count, 4)

    rng = np.random.default_rng(seed)
    started = time.monotonic()
    history: list[dict[str, Any]] = []
    stopped_early = False
    steps_per_epoch = -(-len(encoded) // config.batch_size)
    for epoch in range(config.epochs):
        losses = []
        for step, (x, y, w) in enumerate(_batches(encoded, config.batch_size, rng)):
            losses.append(float(train_step(x, y, w)))
            if step % 200 == 0:
                log(
                    f"epoch {epoch + 1}/{config.epochs} step {step}/{steps_per_epoch} "
                    f"loss {np.mean(losses[-200:]):.3f} ({time.monotonic() - started:.0f}s)"
                )
            if time_budget_s is not None and time.monotonic() - started > time_budget_s:
                stopped_early = True
                break
        entry = {
            "epoch": epoch + 1,
            "steps": len(losses),
            "train_nll_per_token": round(float(np.mean(losses)), 4),
            "validation_nll_per_token": nll(held),
            "elapsed_s": round(time.monotonic() - started, 1),
        }
        history.append(entry)
        log(f"epoch {epoch + 1}: {entry}")
        if stopped_early:
            break
    meta = {
        "format": ARTIFACT_FORMAT,
        "name": "molecules",
        "architecture": "token-level SMILES CharRNN (Embedding, LSTM x layers, Dense), as the MOSES baseline",
        "config": asdict(config),
        "seed": seed,
        "n_train": len(encoded),
        "n_validation": len(held),
        "validation_skipped_unknown_tokens": skipped_val,
        "vocab_size": vocab.size,
        "parameters": int(model.count_params()),
        "history": history,
        "stopped_by_time_budget": stopped_early,
        "train_seconds": round(time.monotonic() - started, 1),
    }
    return TrainedGenerator(keras_model=model, vocab=vocab, config=config, meta=meta)


def train_on_moses(
    *,
    subset: int | None = 280_000,
    epochs: int = 1,
    seed: int = 0,
    config: MolConfig | None = None,
    validation_size: int = 5000,
    eval_samples: int = 10_000,
    time_budget_s: float | None = None,
    log: Callable[[str], None] = lambda m: None,
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
        chosen, config=config, seed=seed, validation=validation, time_budget_s=time_budget_s, log=log
    )
    generator = MoleculeGenerator(
        name="molecules", version="unsaved", keras_model=trained.keras_model, vocab=trained.vocab, meta=trained.meta
    )
    metrics: dict[str, Any] = {
        "validation_nll_per_token": trained.meta["history"][-1]["validation_nll_per_token"],
        "n_validation": trained.meta["n_validation"],
    }
    if eval_samples:
        log(f"sampling {eval_samples:,} molecules and scoring them with RDKit ...")
        metrics["generated"] = chem.evaluate_generator(generator, n=eval_samples, seed=seed)
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
