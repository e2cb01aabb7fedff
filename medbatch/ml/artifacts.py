"""Model artifacts on disk: the one streaming SHA-256, versions, atomic writes, the Keras-zip format.

* :func:`file_sha256` is the project's only streaming SHA-256 of a file (the registry's versions, the
  X-ray training fingerprint, the nightly inbox ledger and the image producer all use it).
* A version is the first :data:`VERSION_CHARS` hex characters of the SHA-256 of the artifact's bytes.
* :func:`atomic_write` writes to a temporary name in the same folder and renames: a reader never sees
  half a file.
* The Keras-zip format (X-ray CNN, molecule generator): one zip holding ``model.keras`` and JSON
  entries (``meta.json`` with a ``format`` tag), entries stamped 2020-01-01 so the same content gives the
  same bytes, loaded with Keras ``safe_mode=True`` (no code runs from an artifact).

TensorFlow and Keras are imported inside functions only: importing this module costs nothing, and a
Celery parent process never loads TensorFlow before it forks its children. TensorFlow's own log lines
(oneDNN, cpu_feature_guard, absl, grappler ``E0000 ... NodeDef`` errors) are quiet unless asked for: see
:func:`tensorflow_verbosity`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from medbatch.errors import ModelMisconfigured

#: Hex characters of an artifact's SHA-256 kept as its version.
VERSION_CHARS = 16
#: Bytes read at a time while hashing a file.
HASH_BLOCK_BYTES = 1 << 20
#: Timestamp of every Keras-zip entry, so identical content gives identical bytes.
ZIP_ENTRY_DATE = (2020, 1, 1, 0, 0, 0)
KERAS_ENTRY = "model.keras"
META_ENTRY = "meta.json"

_tf_lock = threading.Lock()
_tf_ready = False

#: TensorFlow's C++ log level when nobody chose one: 3 hides INFO, WARNING and ERROR lines (the grappler
#: ``E0000 ... NodeDef mentions attribute use_unbounded_threadpool`` is an ERROR line; real failures raise).
QUIET_TF_CPP_MIN_LOG_LEVEL = "3"
#: Lines TensorFlow writes to fd 2 while it loads, before its log level applies; dropped when that level is >= 1.
TF_LOAD_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I0000 .*\] .*"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)\s*$"
)


# --------------------------------------------------------------------------- hashes and versions


def file_digest(path: Path, *, head_bytes: int = 0) -> tuple[str, bytes]:
    """``(SHA-256 hex of the file, its first head_bytes bytes)``, reading the file once in blocks.

    The blocks are read into one buffer, not a new bytes object each: a quarter less CPU on a folder of
    radiographs (0.26 -> 0.20 s for 272 MB), which ``submit`` hashes before it stages them."""
    digest = hashlib.sha256()
    block = bytearray(HASH_BLOCK_BYTES)
    view = memoryview(block)
    with Path(path).open("rb") as fh:
        head = fh.read(head_bytes) if head_bytes else b""
        digest.update(head)
        while n := fh.readinto(block):
            digest.update(view[:n])
    return digest.hexdigest(), head


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes, streamed: memory stays flat however large the file."""
    return file_digest(path)[0]


def file_version(path: Path) -> str:
    """The version of an artifact: the first :data:`VERSION_CHARS` hex digits of the SHA-256 of its bytes."""
    return file_sha256(path)[:VERSION_CHARS]


def bytes_version(data: bytes) -> str:
    """The version of artifact bytes held in memory (the same digits :func:`file_version` gives for the file)."""
    return hashlib.sha256(data).hexdigest()[:VERSION_CHARS]


def read_artifact(path: Path) -> bytes:
    """An artifact's bytes.

    Raises:
        ModelMisconfigured: the file is missing or unreadable.
    """
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ModelMisconfigured(f"model artifact {path} is missing") from exc
    except OSError as exc:
        raise ModelMisconfigured(f"model artifact {path} cannot be read: {exc}") from exc


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename (mode 0644)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; shipped artifacts must be readable by the worker user
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_bytes(obj: Any) -> bytes:
    """JSON for an artifact entry: indented, keys sorted, anything unknown as its string."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


# --------------------------------------------------------------------------- TensorFlow and Keras


def tensorflow_verbosity(verbose: bool) -> None:
    """Choose how much TensorFlow says, before it loads (``medbatch --verbose``, ``MEDBATCH_LOG_LEVEL=DEBUG``):
    everything (``TF_CPP_MIN_LOG_LEVEL=0``) or only what it raises (``3``, the default).

    Set through the environment, so the worker processes a command starts inherit the choice; a
    ``TF_CPP_MIN_LOG_LEVEL`` the user set already wins.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else QUIET_TF_CPP_MIN_LOG_LEVEL)


@contextmanager
def _native_stderr_filtered(drop: re.Pattern) -> Iterator[None]:
    """Hold back what native code writes to fd 2 meanwhile, then write it back less the lines ``drop`` matches
    (whatever else arrived, another thread's log line or a real error, is kept)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            held.seek(0)
            lines = held.read().splitlines(keepends=True)
            kept = [line for line in lines if not drop.match(line.decode("utf-8", "replace"))]
            if kept:
                os.write(2, b"".join(kept))


def tf_module():
    """Import TensorFlow once per process, with GPU memory growth on (so one process per GPU can share it),
    as quiet as :func:`tensorflow_verbosity` chose (quiet when nobody chose).

    The log level must be in the environment before TensorFlow loads, and memory growth set before the first
    GPU operation; this is the only place TensorFlow is imported.
    """
    global _tf_ready
    if "tensorflow" not in sys.modules:
        level = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_TF_CPP_MIN_LOG_LEVEL)
        quiet = level.strip() not in ("", "0")
        with _native_stderr_filtered(TF_LOAD_NOISE) if quiet else nullcontext():
            import keras  # noqa: F401
            import tensorflow  # noqa: F401 - loads the native libraries, which print while they load
        if quiet:  # the Python side: TensorFlow's and absl's loggers say errors only
            for name in ("tensorflow", "absl"):
                logging.getLogger(name).setLevel(logging.ERROR)
    import tensorflow as tf

    with _tf_lock:
        if not _tf_ready:
            for gpu in tf.config.list_physical_devices("GPU"):
                try:
                    tf.config.experimental.set_memory_growth(gpu, True)
                except RuntimeError:  # already initialised by someone else: nothing to do
                    pass
            _tf_ready = True
    return tf


def save_keras_zip(
    keras_model: Any, path: Path, entries: Iterable[tuple[str, bytes]], *, compression: int = zipfile.ZIP_STORED
) -> Path:
    """Write ``model.keras`` then ``entries`` (name, bytes) into the zip ``path``, atomically; returns ``path``.

    Every entry carries :data:`ZIP_ENTRY_DATE`, so the same weights and metadata give the same bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medbatch-keras-") as tmp:
        keras_path = Path(tmp) / KERAS_ENTRY
        keras_model.save(keras_path)
        zip_path = Path(tmp) / path.name
        with zipfile.ZipFile(zip_path, "w", compression=compression) as zf:
            for name, data in ((KERAS_ENTRY, keras_path.read_bytes()), *entries):
                zf.writestr(zipfile.ZipInfo(name, date_time=ZIP_ENTRY_DATE), data, compression)
        atomic_write(path, zip_path.read_bytes())
    return path


def load_keras_zip(path: Path, *, entries: set[str], artifact_format: str, kind: str) -> tuple[Any, dict, dict]:
    """Open a Keras-zip artifact: ``(keras model, meta.json as a dict, {other entry: bytes})``.

    Args:
        path: the zip file.
        entries: exactly the entry names it must hold (``model.keras`` and ``meta.json`` among them).
        artifact_format: the ``format`` meta.json must carry.
        kind: the model's name in error messages (``X-ray``, ``molecule``).

    Raises:
        ModelMisconfigured: other entries, another format, or unreadable (the message names the file).
    """
    path = Path(path)
    tf_module()
    import keras

    try:
        with zipfile.ZipFile(path) as zf:
            meta = _checked_meta(zf, path, entries=entries, artifact_format=artifact_format, kind=kind)
            others = {name: zf.read(name) for name in sorted(set(zf.namelist()) - {KERAS_ENTRY, META_ENTRY})}
            with tempfile.TemporaryDirectory(prefix="medbatch-keras-") as tmp:
                target = Path(tmp) / KERAS_ENTRY
                target.write_bytes(zf.read(KERAS_ENTRY))
                model = keras.saving.load_model(target, compile=False, safe_mode=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ModelMisconfigured(f"{path}: cannot load {kind} model: {type(exc).__name__}: {exc}") from None
    return model, meta, others


def read_keras_zip_meta(data: bytes, *, label: str, entries: set[str], artifact_format: str, kind: str) -> dict:
    """``meta.json`` of a Keras-zip artifact held in memory, checked as :func:`load_keras_zip` checks it,
    without TensorFlow (``label`` names the artifact in error messages). The caller verifies the bytes' hash.

    Raises:
        ModelMisconfigured: other entries, another format, or unreadable.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return _checked_meta(zf, label, entries=entries, artifact_format=artifact_format, kind=kind)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ModelMisconfigured(f"{label}: cannot read {kind} metadata: {type(exc).__name__}: {exc}") from None


def _checked_meta(zf: zipfile.ZipFile, label: Any, *, entries: set[str], artifact_format: str, kind: str) -> dict:
    """The zip's ``meta.json``, after checking it holds exactly ``entries`` and carries ``artifact_format``."""
    names = set(zf.namelist())
    if names != set(entries):
        raise ModelMisconfigured(f"{label} is not a medbatch {kind} artifact (holds {sorted(names)})")
    meta = json.loads(zf.read(META_ENTRY))
    if meta.get("format") != artifact_format:
        raise ModelMisconfigured(f"{label}: unknown artifact format {meta.get('format')!r}")
    return meta
