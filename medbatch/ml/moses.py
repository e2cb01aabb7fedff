"""MOSES (Polykovskiy et al. 2020): the reference figures, the data files, the filters, the training set.

The MOSES data ship in the ``molsets`` package; its files are read directly and ``moses`` is never
imported (it needs torch). This module sits below :mod:`medbatch.ml.chem` (RDKit scoring) and
:mod:`medbatch.ml.molecules` (the generator), so neither imports the other for MOSES's sake.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from medbatch.errors import InvalidInput

MOSES_CHARRNN = {
    "validity": 0.975,
    "unique@1k": 1.0,
    "unique@10k": 0.999,
    "novelty": 0.842,
    "intdiv": 0.856,
    "filters": 0.994,
}
"""The MOSES paper's CharRNN row (table 2): the one copy of the reference figures, keyed as
:func:`medbatch.ml.chem.set_metrics` names its own (so a reference row lines up with a measured one)."""
MOSES_CHARRNN_NAME = "MOSES CharRNN (Polykovskiy et al. 2020)"
"""How the reference row is labelled wherever it is shown."""
#: Atoms a molecule may hold and pass the MOSES filters.
MOSES_ALLOWED_ATOMS = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})

_lock = threading.Lock()
_cache: dict[str, object] = {}


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


#: What generation needs of MOSES, shipped in the package so a plain ``pip install`` scores molecules without
#: molsets (which only training needs): the filter SMARTS and the training set's sorted hashes. Written from
#: molsets 0.3.1; ``moses_reference.json`` beside them records the source file's SHA-256, and a test checks
#: both against molsets whenever it is installed.
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "models"
SHIPPED_FILTERS = SHIPPED_DIR / "moses_filters.smarts"
SHIPPED_TRAIN_HASHES = SHIPPED_DIR / "moses_train_hashes.npy"


def moses_filter_smarts() -> list[str]:
    """The MOSES filter SMARTS (MCF, then WEHI PAINS), as text: the shipped copy, else molsets' data files."""
    if SHIPPED_FILTERS.is_file():
        return [line for line in SHIPPED_FILTERS.read_text().splitlines() if line.strip()]
    metrics = moses_data_dir().parent.parent / "metrics"
    smarts: list[str] = []
    with open(metrics / "mcf.csv", newline="") as fh:
        smarts += [row["smarts"] for row in csv.DictReader(fh)]
    with open(metrics / "wehi_pains.csv", newline="") as fh:
        smarts += [row[0] for row in csv.reader(fh, skipinitialspace=True) if row]
    return [s.strip() for s in smarts]


# --------------------------------------------------------------------------- training set (novelty)


def smiles_hash(smiles: str) -> int:
    """A 64-bit hash of a SMILES string (BLAKE2b), for a compact membership table."""
    return int.from_bytes(hashlib.blake2b(smiles.encode(), digest_size=8).digest(), "little")


class TrainingSet:
    """Membership in the MOSES training set, as a sorted array of 64-bit hashes (12.7 MB for 1.58M).

    The MOSES SMILES are RDKit canonical already (this RDKit leaves a 3,000-molecule sample unchanged),
    and MOSES itself compares canonical generated SMILES with the raw training strings, so the raw
    strings are hashed as they are. A hash collision (odds about 1e-7 per lookup) would call a new
    molecule known.
    """

    def __init__(self, hashes: np.ndarray):
        self.hashes = np.unique(np.asarray(hashes, dtype=np.uint64))

    @classmethod
    def from_smiles(cls, smiles: Iterable[str]) -> TrainingSet:
        return cls(np.fromiter((smiles_hash(s) for s in smiles), dtype=np.uint64))

    def __len__(self) -> int:
        return len(self.hashes)

    def __contains__(self, canonical: str) -> bool:
        h = np.uint64(smiles_hash(canonical))
        i = int(np.searchsorted(self.hashes, h))
        return i < len(self.hashes) and self.hashes[i] == h


def moses_training_set(cache_dir: Path | None = None) -> TrainingSet:
    """The MOSES training set, once per process: the shipped hashes (:data:`SHIPPED_TRAIN_HASHES`), else molsets'.

    Hashing the 1.58M SMILES of ``train.csv.gz`` takes seconds, so the sorted hashes are kept in
    ``cache_dir`` (default ``~/.cache/medbatch``), keyed by the file's size and modification time; a
    cache that cannot be written or read is simply not used.
    """
    with _lock:
        if "train" not in _cache and SHIPPED_TRAIN_HASHES.is_file():
            _cache["train"] = TrainingSet(np.load(SHIPPED_TRAIN_HASHES, allow_pickle=False))
        if "train" not in _cache:
            path = moses_data_dir() / "train.csv.gz"
            st = path.stat()
            cache = (
                Path(cache_dir or Path.home() / ".cache" / "medbatch")
                / f"moses-train-{st.st_size}-{int(st.st_mtime)}.npy"
            )
            try:
                _cache["train"] = TrainingSet(np.load(cache, allow_pickle=False))
            except (OSError, ValueError):
                with gzip.open(path, "rt") as fh:
                    next(fh)
                    training = TrainingSet.from_smiles(line.strip() for line in fh if line.strip())
                _cache["train"] = training
                try:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    tmp = cache.with_suffix(f".{threading.get_ident()}.tmp.npy")
                    np.save(tmp, training.hashes, allow_pickle=False)
                    tmp.replace(cache)
                except OSError:
                    pass
        return _cache["train"]
