"""Drug-like molecule generation: a token-level SMILES CharRNN (Keras LSTMs), the MOSES baseline's shape.

Why a CharRNN and not the source article's GAN: the article's GAN emits 784 numbers, which are not
molecules. On the MOSES benchmark the plain CharRNN (a language model over SMILES, sampled token by
token) is the strongest simple baseline: validity 0.975, unique@10k 0.999, novelty 0.842, filters
0.994. Molecular GANs over SMILES (ORGAN and relatives) need policy-gradient training, are unstable
and measure worse on validity and diversity; the graph-based ones need far more machinery. So the
model is a language model: ``P(next token | tokens so far)``, trained by teacher forcing, sampled with
a temperature.

Tokens are SMILES tokens, not characters: ``Cl``, ``Br``, bracket atoms such as ``[nH]`` or
``[C@@H]`` and two-digit ring closures such as ``%10`` are one token each, so the model never has to
learn to spell them. Every SMILES the vocabulary cannot reproduce exactly is refused, never mangled.

The artifact is one zip file (``model.keras`` + ``vocab.json`` + ``meta.json``), so the registry's
SHA-256 version covers the weights, the vocabulary and the settings together. It is loaded with Keras
``safe_mode=True``: no code runs from it.

Sampling runs a compiled one-step function over a batch of sequences, passing the LSTM states by
hand (no stateful layers), and draws each token with the Gumbel-max trick from a NumPy generator
seeded by the caller: the same seed and batch size give the same molecules, so a re-delivered batch
regenerates exactly what it did the first time.

TensorFlow is imported inside functions only: importing this module costs nothing.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medbatch.errors import InvalidInput, ModelMisconfigured

ARTIFACT_NAME = "molecules.zip"
ARTIFACT_FORMAT = "medbatch-molecules-1"
ARTIFACT_ENTRIES = {"model.keras", "vocab.json", "meta.json"}
PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)
#: SMILES tokens: bracket atoms, two-letter halogens, ring closures %NN, then single characters.
TOKEN_RE = re.compile(r"(\[[^\[\]]+\]|Br|Cl|%\d{2}|[BCNOPSFIbcnops]|[()=#\-+\\/:~@?>*$.]|\d)")
#: Reference figures from the MOSES paper (Polykovskiy et al. 2020, table 2), CharRNN row.
MOSES_CHARRNN = {
    "validity": 0.975,
    "unique@1k": 1.0,
    "unique@10k": 0.999,
    "novelty": 0.842,
    "intdiv": 0.856,
    "filters": 0.994,
}

_tf_lock = threading.Lock()


def tf_module():
    """Import TensorFlow once per process (GPU memory growth on, as for the X-ray model)."""
    from medbatch.ml.xray import tf_module as _tf

    with _tf_lock:
        return _tf()


# --------------------------------------------------------------------------- tokens


def tokenize(smiles: str) -> list[str]:
    """Split a SMILES string into tokens.

    Raises:
        InvalidInput: the string holds characters no token covers (so joining the tokens would not give
            the string back).
    """
    tokens = TOKEN_RE.findall(smiles)
    if "".join(tokens) != smiles:
        raise InvalidInput(f"cannot tokenize SMILES {smiles[:80]!r}")
    return tokens


@dataclass(frozen=True)
class Vocabulary:
    """Token <-> id. Ids 0, 1, 2 are padding, begin and end of sequence."""

    tokens: tuple[str, ...]

    @classmethod
    def build(cls, smiles: Sequence[str]) -> Vocabulary:
        """The sorted set of tokens of ``smiles``, after the three special tokens."""
        seen: set[str] = set()
        for s in smiles:
            seen.update(tokenize(s))
        return cls(SPECIALS + tuple(sorted(seen)))

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    def encode(self, smiles: str) -> list[int]:
        """``[BOS] + token ids + [EOS]``.

        Raises:
            InvalidInput: untokenizable SMILES or a token outside the vocabulary.
        """
        index = self.index
        try:
            return [1, *(index[t] for t in tokenize(smiles)), 2]
        except KeyError as exc:
            raise InvalidInput(f"token {exc.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Sequence[int]) -> str:
        """The SMILES spelled by ``ids``, up to the first end token; padding and begin tokens are skipped."""
        out = []
        for i in ids:
            i = int(i)
            if i == 2:
                break
            if i > 2:
                out.append(self.tokens[i])
        return "".join(out)

    def to_json(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabulary:
        tokens = tuple(data["tokens"])
        if tokens[:3] != SPECIALS:
            raise ModelMisconfigured("vocabulary does not start with the special tokens")
        return cls(tokens)


# --------------------------------------------------------------------------- data


def moses_data_dir() -> Path:
    """The folder of the MOSES data files shipped in the ``molsets`` package (found, never imported:
    ``import moses`` needs torch).

    Raises:
        InvalidInput: molsets is not installed.
    """
    spec = importlib.util.find_spec("moses")
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInput("the MOSES data is missing: `pip install --no-deps molsets`")
    return Path(next(iter(spec.submodule_search_locations))) / "dataset" / "data"


def read_moses_smiles(split: str = "train") -> list[str]:
    """Every SMILES of a MOSES split (``train``: 1,584,663; ``test``: 176,074), in file order."""
    path = moses_data_dir() / f"{split}.csv.gz"
    if not path.is_file():
        raise InvalidInput(f"MOSES {split} set not found at {path}")
    with gzip.open(path, "rt") as fh:
        header = fh.readline().strip()
        if header != "SMILES":
            raise InvalidInput(f"{path}: unexpected header {header!r}")
        return [line.strip() for line in fh if line.strip()]


def sample_subset(smiles: Sequence[str], n: int | None, seed: int) -> list[str]:
    """A seeded random subset of ``n`` SMILES (all of them, shuffled, when ``n`` is None or too big)."""
    order = np.random.default_rng(seed).permutation(len(smiles))
    if n is not None:
        order = order[:n]
    return [smiles[i] for i in order]


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class MolConfig:
    """Shape and training knobs of the CharRNN. MOSES used 3 x 768 units; the default fits a CPU."""

    embedding: int = 64
    units: int = 256
    layers: int = 2
    dropout: float = 0.0  # one or two passes over a subset do not overfit; dropout only slows learning
    learning_rate: float = 2e-3  # decays along a cosine to 10% of this by the last step
    batch_size: int = 128
    epochs: int = 1
    clipnorm: float = 1.0
    max_tokens: int = 100  # longest SMILES sampled (MOSES molecules have at most ~60 tokens)


def build_model(vocab_size: int, config: MolConfig):
    """Embedding -> ``layers`` x LSTM(``units``) -> Dense logits over the vocabulary.

    Input: ``(n, t)`` int32 token ids. Output: ``(n, t, vocab_size)`` logits of the next token.
    Layers are named ``embedding``, ``lstm_1``..., ``logits`` so the sampler can find them.
    """
    tf_module()
    import keras

    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(vocab_size, config.embedding, name="embedding")(tokens)
    for i in range(config.layers):
        x = keras.layers.LSTM(config.units, return_sequences=True, name=f"lstm_{i + 1}")(x)
        if config.dropout:
            x = keras.layers.Dropout(config.dropout, name=f"dropout_{i + 1}")(x)
    logits = keras.layers.Dense(vocab_size, name="logits")(x)
    return keras.Model(tokens, logits, name="smiles_charrnn")


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


# --------------------------------------------------------------------------- the loaded generator


@dataclass
class MoleculeGenerator:
    """A loaded generator: the model contract (name, version) plus batch sampling."""

    name: str
    version: str
    keras_model: Any
    vocab: Vocabulary
    meta: dict[str, Any]
    _step: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def max_tokens(self) -> int:
        return int(self.meta.get("config", {}).get("max_tokens", 100))

    def _state_shapes(self) -> list[int]:
        units = []
        i = 1
        while True:
            try:
                layer = self.keras_model.get_layer(f"lstm_{i}")
            except ValueError:
                return units
            units.append(int(layer.units))
            i += 1

    def _compiled_step(self):
        """One compiled step: (token ids (n,), states [h1, c1, h2, c2, ...]) -> (logits (n, V), new states)."""
        with self._lock:
            if self._step is None:
                tf = tf_module()
                m = self.keras_model
                embed = m.get_layer("embedding")
                cells = [m.get_layer(f"lstm_{i + 1}").cell for i in range(len(self._state_shapes()))]
                dense = m.get_layer("logits")
                specs = [tf.TensorSpec([None], tf.int32)] + [
                    tf.TensorSpec([None, u], tf.float32) for u in self._state_shapes() for _ in (0, 1)
                ]

                @tf.function(input_signature=specs)
                def step(tokens, *states):
                    x = embed(tokens)
                    new = []
                    for k, cell in enumerate(cells):
                        x, (h, c) = cell(x, [states[2 * k], states[2 * k + 1]], training=False)
                        new += [h, c]
                    return (dense(x), *new)

                self._step = step
            return self._step

    def sample_ids(self, n: int, *, seed: int, temperature: float = 1.0, max_tokens: int | None = None) -> np.ndarray:
        """``n`` token-id sequences (``(n, max_tokens)``, 0-padded after the end token).

        Deterministic for a given (weights, n, seed, temperature): the Gumbel noise for every step is
        drawn for all ``n`` rows even when some have already ended.
        """
        if n <= 0:
            return np.zeros((0, 0), dtype=np.int32)
        if not 0 < temperature <= 10:
            raise InvalidInput(f"temperature must be above 0 and at most 10 (got {temperature})")
        step = self._compiled_step()
        limit = max_tokens or self.max_tokens
        rng = np.random.default_rng(seed)
        states = [np.zeros((n, u), dtype=np.float32) for u in self._state_shapes() for _ in (0, 1)]
        tokens = np.full(n, 1, dtype=np.int32)
        out = np.zeros((n, limit), dtype=np.int32)
        done = np.zeros(n, dtype=bool)
        for t in range(limit):
            logits, *states = step(tokens, *states)
            logits = np.asarray(logits, dtype=np.float64) / temperature
            logits[:, 0] = -np.inf  # never padding, and never a second begin token
            logits[:, 1] = -np.inf
            gumbel = -np.log(-np.log(rng.uniform(1e-12, 1.0, size=logits.shape)))
            nxt = np.argmax(logits + gumbel, axis=1).astype(np.int32)
            nxt[done] = 0
            out[:, t] = nxt
            done |= nxt == 2
            tokens = np.where(done, 2, nxt).astype(np.int32)
            if done.all():
                return out[:, : t + 1]
        return out

    def sample(
        self, n: int, *, seed: int, temperature: float = 1.0, max_tokens: int | None = None
    ) -> list[GeneratedString]:
        """``n`` generated SMILES strings (not yet checked by RDKit), each with whether it ended properly."""
        ids = self.sample_ids(n, seed=seed, temperature=temperature, max_tokens=max_tokens)
        out = []
        for row in ids:
            ended = bool((row == 2).any())
            out.append(GeneratedString(self.vocab.decode(row), ended))
        return out


@dataclass(frozen=True)
class GeneratedString:
    smiles: str
    ended: bool  # False: the sequence hit max_tokens before an end token (truncated)


# --------------------------------------------------------------------------- artifact


def save_model(trained: TrainedGenerator, directory: Path, *, extra_meta: dict[str, Any] | None = None) -> Path:
    """Write the artifact (zip of ``model.keras`` + ``vocab.json`` + ``meta.json``) into ``directory``.

    Returns:
        The artifact's path (``directory/molecules.zip``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {**trained.meta, **(extra_meta or {})}
    with tempfile.TemporaryDirectory(prefix="medbatch-molecules-") as tmp:
        keras_path = Path(tmp) / "model.keras"
        trained.keras_model.save(keras_path)
        path = directory / ARTIFACT_NAME
        entries = (
            ("model.keras", keras_path.read_bytes()),
            ("vocab.json", _json_bytes(trained.vocab.to_json())),
            ("meta.json", _json_bytes(meta)),
        )
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries:
                zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, zipfile.ZIP_DEFLATED)
    return path


def load_model(path: Path) -> MoleculeGenerator:
    """Load an artifact written by :func:`save_model` (Keras ``safe_mode=True``).

    Raises:
        ModelMisconfigured: not a medbatch molecule artifact, or unreadable.
    """
    path = Path(path)
    tf_module()
    import keras

    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if names != ARTIFACT_ENTRIES:
                raise ModelMisconfigured(f"{path} is not a medbatch molecule artifact (holds {sorted(names)})")
            meta = json.loads(zf.read("meta.json"))
            if meta.get("format") != ARTIFACT_FORMAT:
                raise ModelMisconfigured(f"{path}: unknown artifact format {meta.get('format')!r}")
            vocab = Vocabulary.from_json(json.loads(zf.read("vocab.json")))
            with tempfile.TemporaryDirectory(prefix="medbatch-molecules-") as tmp:
                target = Path(tmp) / "model.keras"
                target.write_bytes(zf.read("model.keras"))
                model = keras.saving.load_model(target, compile=False, safe_mode=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ModelMisconfigured(f"{path}: cannot load molecule model: {type(exc).__name__}: {exc}") from None
    if int(model.output_shape[-1]) != vocab.size:
        raise ModelMisconfigured(f"{path}: model outputs {model.output_shape[-1]} tokens, vocabulary has {vocab.size}")
    from medbatch.ml.registry import file_version

    return MoleculeGenerator(
        name=meta.get("name", "molecules"), version=file_version(path), keras_model=model, vocab=vocab, meta=meta
    )


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


# --------------------------------------------------------------------------- training on MOSES, end to end


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
    from medbatch.ml import chem

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


def write_card(trained: TrainedGenerator, artifact: Path) -> Path:
    """Write the model card ``<artifact stem>.json`` beside the artifact (metrics, data, seed, settings)."""
    from datetime import UTC, datetime

    from medbatch.ml.registry import file_version

    artifact = Path(artifact)
    meta = trained.meta
    card = {
        "name": "molecules",
        "version": file_version(artifact),
        "architecture": meta["architecture"],
        "config": meta["config"],
        "parameters": meta["parameters"],
        "vocab_size": meta["vocab_size"],
        "seed": meta["seed"],
        "subset": meta.get("subset"),
        "epochs": meta.get("epochs"),
        "history": meta["history"],
        "stopped_by_time_budget": meta["stopped_by_time_budget"],
        "train_seconds": meta["train_seconds"],
        "metrics": meta.get("metrics", {}),
        "reference_moses_charrnn": MOSES_CHARRNN,
        "training_source": meta.get("training_source", ""),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "artifact_bytes": artifact.stat().st_size,
        "intended_use": (
            "research and demonstration: candidate structures for a chemist to review; not a drug, "
            "not a synthesis plan, no claim of activity or safety"
        ),
    }
    path = artifact.with_suffix(".json")
    path.write_text(json.dumps(card, indent=2, default=str) + "\n")
    return path
