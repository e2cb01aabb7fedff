"""The CharRNN (Embedding, LSTMs, Dense logits) and the loaded generator's seeded batch sampling."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medbatch.errors import InvalidInput
from medbatch.ml.artifacts import tf_module
from medbatch.ml.molecules.tokens import Vocabulary


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
        return int(self.meta.get("config", {}).get("max_tokens", MolConfig.max_tokens))

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
