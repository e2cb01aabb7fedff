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

TensorFlow is imported inside functions only: importing this package costs nothing.

Modules by responsibility: ``tokens`` (tokenizer, vocabulary), ``model`` (the CharRNN, the loaded
generator and its sampler), ``training`` (teacher forcing, the MOSES run) and ``artifact`` (the Keras
zip, the card). MOSES itself (reference figures, data files, filters, training set) is
:mod:`medbatch.ml.moses`. Everything callers use is re-exported here.
"""

from medbatch.ml.artifacts import tf_module
from medbatch.ml.molecules.artifact import (
    ARTIFACT_ENTRIES,
    ARTIFACT_FORMAT,
    ARTIFACT_NAME,
    load_model,
    save_model,
    write_card,
)
from medbatch.ml.molecules.model import GeneratedString, MolConfig, MoleculeGenerator, build_model
from medbatch.ml.molecules.tokens import BOS, EOS, PAD, SPECIALS, TOKEN_RE, Vocabulary, tokenize
from medbatch.ml.molecules.training import TrainedGenerator, encode_all, sample_subset, train_generator, train_on_moses
from medbatch.ml.moses import MOSES_CHARRNN, moses_data_dir, read_moses_smiles

__all__ = [
    "ARTIFACT_ENTRIES",
    "ARTIFACT_FORMAT",
    "ARTIFACT_NAME",
    "BOS",
    "EOS",
    "MOSES_CHARRNN",
    "PAD",
    "SPECIALS",
    "TOKEN_RE",
    "GeneratedString",
    "MolConfig",
    "MoleculeGenerator",
    "TrainedGenerator",
    "Vocabulary",
    "build_model",
    "encode_all",
    "load_model",
    "moses_data_dir",
    "read_moses_smiles",
    "sample_subset",
    "save_model",
    "tf_module",
    "tokenize",
    "train_generator",
    "train_on_moses",
    "write_card",
]
