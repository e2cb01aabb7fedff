"""Find the radiographs in a folder and turn them into items: one per distinct image content.

Each file is sniffed (PNG, JPEG or DICOM by its first bytes, not its name) and hashed. Items are
keyed by the SHA-256 of their bytes, so the same image twice in a job is processed once; the worker
checks the hash again before it reads the pixels, so a file changed after submission is caught.
DICOM headers are read without their pixels to take the patient ID (kept in the database, never in
a message) and to refuse a modality that is not a radiograph before it is queued.

Anything unusable (empty, not an image, an unreadable DICOM header) becomes a rejection with a reason;
pixels are decoded by the worker, where a corrupt image becomes an item error.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medbatch.errors import InvalidInput
from medbatch.ml import images
from medbatch.ml.artifacts import file_digest
from medbatch.producer.chunks import RecordChunk
from medbatch.producer.paths import check_input_path, file_kind

#: Default include patterns: every file (DICOM exports often have no extension); non-images are reported.
DEFAULT_INCLUDE = ("*",)
#: Skipped without a report: operating-system clutter, never a radiograph.
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "dicomdir"})


@dataclass
class ImageScan:
    """What a folder walk found (filled in as the chunks are consumed)."""

    files: list[Path]
    total_bytes: int
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (duplicate path, first path)


def list_images(root: Path, include: Sequence[str] = DEFAULT_INCLUDE, exclude: Sequence[str] = ()) -> ImageScan:
    """Every candidate file under ``root`` (recursive, sorted, hidden files and folders skipped).

    ``include``/``exclude`` are shell patterns matched against the file name, case-insensitively.
    Symbolic links to folders are not followed.

    Raises:
        InvalidInput: ``root`` is missing or not a folder, or holds no matching file.
    """
    root = Path(root)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                low = name.lower()
                if name.startswith(".") or low in IGNORED_NAMES:
                    continue
                if not any(fnmatch.fnmatch(low, p.lower()) for p in include):
                    continue
                if any(fnmatch.fnmatch(low, p.lower()) for p in exclude):
                    continue
                files.append(Path(dirpath) / name)
    elif root.exists():
        raise InvalidInput(f"{root} is neither a file nor a folder")
    else:
        raise InvalidInput(f"{root} does not exist")
    if not files:
        raise InvalidInput(f"{root}: no files match {', '.join(include)} (excluding {', '.join(exclude) or 'nothing'})")
    total = 0
    for f in files:
        try:
            total += f.stat().st_size
        except OSError:
            pass
    return ImageScan(files=files, total_bytes=total)


def _hash_and_head(path: Path, max_bytes: int) -> tuple[str, bytes, int]:
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read, a device never end
        raise images.ImageRejected(f"a {file_kind(st.st_mode)}, not a regular file: only regular files are read")
    size = st.st_size
    if size == 0:
        raise images.ImageRejected("file is empty (0 bytes)")
    if size > max_bytes:
        raise images.ImageRejected(f"file is {size / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
    digest, head = file_digest(path, head_bytes=1 << 16)
    return digest, head, size


def _dicom_header(path: Path, modalities: frozenset[str], force: bool) -> str | None:
    """The patient ID of a DICOM file, after checking its header; raises ImageRejected."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=force)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on hostile input
        raise images.ImageRejected(f"DICOM header is unreadable: {type(exc).__name__}: {exc}") from None
    try:
        modality = str(ds.get("Modality", "") or "").strip().upper()
        has_image = "Rows" in ds or "Columns" in ds
        pid = str(ds.get("PatientID", "") or "").strip()
    except Exception as exc:  # noqa: BLE001 - pydicom parses lazily: a corrupt element raises here
        raise images.ImageRejected(f"DICOM header is corrupt: {type(exc).__name__}: {exc}") from None
    if modality and modality not in modalities:
        raise images.ImageRejected(
            f"DICOM modality {modality} is not a radiograph (accepted: {', '.join(sorted(modalities))})"
        )
    if not has_image:
        raise images.ImageRejected("DICOM has no image (no rows/columns: a DICOMDIR, report or other non-image)")
    if "\x00" in pid:  # no text column can store one, and an id cut or changed to fit is another patient's
        raise images.ImageRejected("the DICOM patient ID holds a NUL character: a damaged header?")
    return pid[:128] or None


def iter_image_chunks(
    scan: ImageScan,
    *,
    chunk_size: int = 1000,
    max_bytes: int = images.DEFAULT_MAX_BYTES,
    modalities: Sequence[str] = tuple(images.RADIOGRAPH_MODALITIES),
    input_roots: Sequence[Path] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[RecordChunk]:
    """Sniff, hash and describe each file of ``scan``; yields chunks of items and rejections.

    Item payloads hold the absolute path, the content hash, the size and the kind: never pixels.
    ``RecordChunk.bytes_read`` counts the bytes hashed so far (for a progress bar). A file that resolves
    outside ``input_roots`` (a symlink leading out of the folder) is rejected, never read.
    """
    allowed = frozenset(m.upper() for m in modalities)
    seen: dict[str, str] = {}
    chunk = RecordChunk()
    done_bytes = 0
    for path in scan.files:
        source = str(path.absolute())  # as found (a symlink keeps its own name); the payload holds what is read
        try:
            if input_roots is not None:
                try:
                    path = check_input_path(path, input_roots)
                except InvalidInput as exc:
                    raise images.ImageRejected(str(exc)) from None
            digest, head, size = _hash_and_head(path, max_bytes)
            done_bytes += size
            kind = images.sniff(head[:132], path.name)
            if kind is None:
                raise images.ImageRejected(f"not a PNG, JPEG or DICOM file (unrecognised content, {size} bytes)")
            patient = None
            if kind == "dicom":
                patient = _dicom_header(path, allowed, force=head[128:132] != b"DICM")
        except images.ImageRejected as exc:
            chunk.rejected.append({"source_uri": source, "source_row": None, "patient_ref": None, "reason": str(exc)})
        except OSError as exc:
            chunk.rejected.append(
                {"source_uri": source, "source_row": None, "patient_ref": None, "reason": f"unreadable: {exc.strerror}"}
            )
        else:
            if digest in seen:
                scan.duplicates.append((source, seen[digest]))
            else:
                seen[digest] = source
                chunk.items.append(
                    {
                        "item_key": f"sha256:{digest}",
                        "source_uri": source,
                        "source_row": None,
                        "patient_ref": patient,
                        "payload": {"path": str(path.resolve()), "sha256": digest, "bytes": size, "kind": kind},
                    }
                )
        if len(chunk.items) + len(chunk.rejected) >= chunk_size:
            chunk.bytes_read = done_bytes
            yield chunk
            chunk = RecordChunk()
        if progress is not None:
            progress(done_bytes)
    chunk.bytes_read = done_bytes
    yield chunk
