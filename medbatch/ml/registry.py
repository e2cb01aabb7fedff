"""Where model artifacts live and how each kind is loaded: lazily, once per process, verified by hash.

A registry URI is either ``builtin:<file>`` (an artifact shipped inside the package, in
``medbatch/models``) or a filesystem path. The SQL registry rows live in :mod:`medbatch.db`; this module
only knows files.
"""

from __future__ import annotations

import importlib
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medbatch.errors import ModelMisconfigured
from medbatch.ml.artifacts import bytes_version, file_version, read_artifact  # file_version: re-exported too

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "models"
BUILTIN_PREFIX = "builtin:"

#: model name -> "module:function" that loads an artifact path into a model object.
LOADERS: dict[str, str] = {
    "risk": "medbatch.ml.tabular:load_model",
    "treatment": "medbatch.ml.tabular:load_model",
    "xray": "medbatch.ml.xray:load_model",
    "molecules": "medbatch.ml.molecules:load_model",
}

#: The shipped artifact for each model name, used when the registry has none yet.
BUILTIN_ARTIFACTS: dict[str, str] = {
    "risk": "builtin:risk.skops",
    "treatment": "builtin:treatment.skops",
    "molecules": "builtin:molecules.zip",
}

_cache: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()


def resolve_uri(uri: str) -> Path:
    """The local path of an artifact URI."""
    if uri.startswith(BUILTIN_PREFIX):
        return BUILTIN_DIR / uri[len(BUILTIN_PREFIX) :]
    return Path(uri).expanduser()


def save_versioned(save: Callable[[Path], Path], root: Path, name: str) -> Path:
    """Save an artifact with ``save(directory)`` and file it under ``root/name/version/``.

    Every version keeps its own folder, so training a new model never changes the bytes that running
    jobs were submitted with (their hash check would fail otherwise).

    Returns:
        The artifact's final path.
    """
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        path = save(staging)
        final = root / name / file_version(path)
        if not final.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            staging.rename(final)
        return final / path.name
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _loader(name: str):
    try:
        module, func = LOADERS[name].split(":")
    except KeyError:
        raise ModelMisconfigured(f"no loader for model {name!r}; known: {', '.join(sorted(LOADERS))}") from None
    return getattr(importlib.import_module(module), func)


def cached(name: str, version: str) -> Any | None:
    """The model already loaded in this process, if any."""
    with _lock:
        return _cache.get((name, version))


def load(name: str, version: str, uri: str) -> Any:
    """Load model ``name`` at ``version`` from ``uri``, once per process; later calls return the cached object.

    Raises:
        ModelMisconfigured: the artifact is missing or its bytes do not hash to ``version``.
    """
    key = (name, version)
    with _lock:
        model = _cache.get(key)
        if model is not None:
            return model
        path = resolve_uri(uri)
        if not path.is_file():
            raise ModelMisconfigured(f"model {name} {version}: artifact {path} not found on this worker")
        _check_version(name, version, path, file_version(path))
        model = _loader(name)(path)
        _cache[key] = model
        return model


def verified_bytes(name: str, version: str, uri: str) -> bytes:
    """The bytes of model ``name``'s artifact at ``uri``, read once and checked to hash to ``version``
    (what :func:`load` checks), for reading its metadata without loading the model.

    Raises:
        ModelMisconfigured: the artifact is missing or its bytes do not hash to ``version``.
    """
    path = resolve_uri(uri)
    if not path.is_file():
        raise ModelMisconfigured(f"model {name} {version}: artifact {path} not found on this worker")
    data = read_artifact(path)
    _check_version(name, version, path, bytes_version(data))
    return data


def _check_version(name: str, version: str, path: Path, actual: str) -> None:
    if actual != version:
        raise ModelMisconfigured(
            f"model {name}: artifact {path} hashes to {actual}, registry says {version} (changed or tampered)"
        )


def clear_cache() -> None:
    """Forget loaded models (tests; a worker never needs this)."""
    with _lock:
        _cache.clear()
