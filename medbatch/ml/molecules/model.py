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

    def _recurrent_layers(self) -> list:
        """The model's recurrent layers in the order data flows through them: any layer with a ``cell``
        (LSTM, GRU, ...), found by what it is, not by name, so the sampler serves any recurrent shape."""
        return [layer for layer in self.keras_model.layers if getattr(layer, "cell", None) is not None]

    def _state_shapes(self) -> list[int]:
        """Units of every state tensor, layer by layer (an LSTM has two, h and c; a GRU one)."""
        shapes: list[int] = []
        for layer in self._recurrent_layers():
            size = layer.cell.state_size
            shapes += [int(s) for s in size] if isinstance(size, list | tuple) else [int(size)]
        return shapes

    def _compiled_step(self):
        """One compiled step: (token ids (n,), every state tensor) -> (logits (n, V), new states, same order)."""
        with self._lock:
            if self._step is None:
                tf = tf_module()
                m = self.keras_model
                embed = m.get_layer("embedding")
                cells = []
                for layer in self._recurrent_layers():
                    size = layer.cell.state_size
                    cells.append((layer.cell, len(size) if isinstance(size, list | tuple) else 1))
                dense = m.get_layer("logits")
                specs = [tf.TensorSpec([None], tf.int32)] + [
                    tf.TensorSpec([None, u], tf.float32) for u in self._state_shapes()
                ]

                @tf.function(input_signature=specs)
                def step(tokens, *states):
                    x = embed(tokens)
                    new, i = [], 0
                    for cell, count in cells:
                        x, state = cell(x, list(states[i : i + count]), training=False)
                        new += list(state) if isinstance(state, list | tuple) else [state]
                        i += count
                    return (dense(x), *new)

                self._step = step
            return self._step

    def sample_ids(self, n: int, *, seed: int, temperature: float = 1.0, max_tokens: int | None = None) -> np.ndarray:
        """``n`` token-id sequences (``(n, max_tokens)``, 0-padded after the end token).

        Deterministic for a given (weights, n, seed, temperature): the Gumbel noise for every step is
        drawn for all ``n`` rows even when some have already ended.
        """
        return self.sample_ids_nll(n, seed=seed, temperature=temperature, max_tokens=max_tokens)[0]

    def sample_ids_nll(
        self, n: int, *, seed: int, temperature: float = 1.0, max_tokens: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`sample_ids` and each sequence's negative log-likelihood in nats (``(n,)`` float64).

        The NLL is the sum over the sequence's tokens, the end token included, of ``-log softmax(logits / T)``
        of the chosen token: the likelihood of the sample under the distribution it was drawn from (the
        padding and begin tokens, which are never drawn, are excluded from the softmax). The draws are
        the same with or without it.

        Only the sequences that have not ended go through the next step (an ended one's row is dropped from
        the tokens and states), while the Gumbel noise is still drawn for all ``n`` rows at every step and
        each live row takes its own row of it: the draws and tokens are those of stepping all ``n`` rows to
        the end, the NLLs equal to float32 rounding (bit for bit on one machine over 36 batches of 8 to 500; on
        another, whose kernels depend on a product's row count, within 1e-6), at
        about a fifth less CPU (a batch steps as long as its longest sequence; most end well before).
        """
        if n <= 0:
            return np.zeros((0, 0), dtype=np.int32), np.zeros(0)
        if not 0 < temperature <= 10:
            raise InvalidInput(f"temperature must be above 0 and at most 10 (got {temperature})")
        step = self._compiled_step()
        limit = max_tokens or self.max_tokens
        rng = np.random.default_rng(seed)
        states = [np.zeros((n, u), dtype=np.float32) for u in self._state_shapes()]
        tokens = np.full(n, 1, dtype=np.int32)
        out = np.zeros((n, limit), dtype=np.int32)
        nll = np.zeros(n)
        live = np.arange(n)  # the rows that have not drawn their end token, in order
        for t in range(limit):
            logits, *states = step(tokens, *states)
            logits = np.asarray(logits, dtype=np.float64) / temperature
            logits[:, 0] = -np.inf  # never padding, and never a second begin token
            logits[:, 1] = -np.inf
            uniform = rng.uniform(1e-12, 1.0, size=(n, logits.shape[1]))[live]  # every row's noise is drawn
            gumbel = -np.log(-np.log(uniform))
            nxt = np.argmax(logits + gumbel, axis=1).astype(np.int32)
            top = logits.max(axis=1)
            log_z = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
            nll[live] += log_z - logits[np.arange(len(live)), nxt]
            out[live, t] = nxt
            going = nxt != 2
            if not going.any():
                return out[:, : t + 1], nll
            live, tokens = live[going], nxt[going]
            states = [np.asarray(s)[going] for s in states]
        return out, nll

    def sample(
        self, n: int, *, seed: int, temperature: float = 1.0, max_tokens: int | None = None
    ) -> list[GeneratedString]:
        """``n`` generated SMILES strings (not yet checked by RDKit), each with whether it ended properly,
        its negative log-likelihood (nats, at ``temperature``) and its token count (end token included)."""
        ids, nll = self.sample_ids_nll(n, seed=seed, temperature=temperature, max_tokens=max_tokens)
        out = []
        for row, value in zip(ids, nll, strict=True):
            ended = bool((row == 2).any())
            out.append(GeneratedString(self.vocab.decode(row), ended, round(float(value), 4), int((row != 0).sum())))
        return out


@dataclass(frozen=True)
class GeneratedString:
    smiles: str
    ended: bool  # False: the sequence hit max_tokens before an end token (truncated)
    nll: float | None = None  # negative log-likelihood of the sampled tokens, nats, at the sampling temperature
    tokens: int = 0  # tokens drawn, the end token included
