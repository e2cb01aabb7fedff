"""Read radiographs from PNG, JPEG and DICOM into one shape: a float32 grayscale array in [0, 1].

Every reader ends in the same display convention: bone and soft tissue bright, air dark (a
MONOCHROME1 DICOM is inverted). The model, Grad-CAM overlays and the training pipeline all see
pixels from :func:`decode`, so what a model was trained on is exactly what it is served.

Anything that cannot be read safely raises :class:`ImageRejected` with a reason a person can act on:
an empty or truncated file, bytes that are not an image, a DICOM without pixel data or of a
modality that is not a radiograph, an image too large to decode safely. Oddities that still give a
usable radiograph (a colour image, a multi-frame file, no window in the header) are returned with
``flags`` that say what was done.

This module imports no TensorFlow, Celery or SQLAlchemy: the producer uses :func:`sniff` to reject
non-images before they are staged.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medbatch import defaults
from medbatch.errors import ImageRejected, InvalidInput  # noqa: F401 - ImageRejected re-exported

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
DICOM_EXTENSIONS = (".dcm", ".dicom", ".dic")
#: Modalities accepted as plain radiographs (see :mod:`medbatch.defaults` for this and the limits below).
RADIOGRAPH_MODALITIES = frozenset(defaults.IMAGING_MODALITIES)
#: Largest image decoded, in pixels per frame.
DEFAULT_MAX_PIXELS = defaults.IMAGING_MAX_PIXELS
#: Largest file read, in bytes.
DEFAULT_MAX_BYTES = defaults.IMAGING_MAX_FILE_BYTES
#: Largest decoded pixel buffer of a DICOM (all frames), in bytes; also the most one decode may cost.
DEFAULT_MAX_DECODED_BYTES = defaults.IMAGING_MAX_DECODED_BYTES
#: Working memory per pixel on top of the decoded buffer: the float32 result and one transient copy.
DECODE_WORK_BYTES_PER_PIXEL = 8
#: Bytes per pixel of Pillow's decoded buffer, by mode (Pillow keeps 2 to 4 bands in 4 bytes).
_PIL_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def decode_budget(child_memory_bytes: int, threads: int) -> int:
    """The most one decode may cost: its share of a pool child's memory limit (``threads`` decode at
    once), never more than :data:`DEFAULT_MAX_DECODED_BYTES`; that cap alone when the child has no limit."""
    if child_memory_bytes <= 0:
        return DEFAULT_MAX_DECODED_BYTES
    return min(DEFAULT_MAX_DECODED_BYTES, child_memory_bytes // max(1, threads))


def decode_cost(width: int, height: int, mode: str) -> int:
    """Bytes a raster of ``width`` x ``height`` in Pillow ``mode`` costs to decode and convert, from its header."""
    return width * height * (_PIL_BYTES_PER_PIXEL.get(mode, 4) + DECODE_WORK_BYTES_PER_PIXEL)


@dataclass
class DecodedImage:
    """A radiograph in display convention.

    Attributes:
        pixels: float32 array (height, width), values in [0, 1], air dark and bone bright.
        kind: ``png``, ``jpeg`` or ``dicom``.
        original_shape: (height, width) before any resize.
        flags: what was done to make the input usable (colour converted, first frame used, ...).
        modality: the DICOM modality, or None for PNG/JPEG.
    """

    pixels: np.ndarray
    kind: str
    original_shape: tuple[int, int]
    flags: list[str] = field(default_factory=list)
    modality: str | None = None


def sniff(head: bytes, name: str = "") -> str | None:
    """The kind of image the first bytes of a file announce, or None.

    Args:
        head: at least the first 132 bytes of the file (fewer is fine for PNG/JPEG).
        name: the file name; a DICOM stream without the 128-byte preamble is only tried when the name
            has a DICOM extension.

    Returns:
        ``png``, ``jpeg``, ``dicom``, or None when the bytes are not one of them.
    """
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if name.lower().endswith(DICOM_EXTENSIONS) and len(head) >= 8:
        return "dicom"
    return None


def read_file(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of ``path``, refusing empty, unreadable and oversized files with a reason."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageRejected("file not found (moved or deleted since it was submitted)") from None
    except OSError as exc:
        raise ImageRejected(f"file cannot be read: {exc.strerror or exc}") from None
    if size == 0:
        raise ImageRejected("file is empty (0 bytes)")
    if size > max_bytes:
        raise ImageRejected(f"file is {size / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB limit")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageRejected(f"file cannot be read: {exc.strerror or exc}") from None


def decode(
    data: bytes,
    *,
    name: str = "",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    modalities: Iterable[str] = RADIOGRAPH_MODALITIES,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> DecodedImage:
    """Decode PNG, JPEG or DICOM bytes into a :class:`DecodedImage`.

    Args:
        data: the whole file.
        name: the file name (only used to recognise a DICOM file without a preamble).
        max_pixels: refuse an image with more pixels per frame than this, before decoding it.
        modalities: DICOM modalities accepted; others are refused as not a radiograph.
        max_decoded_bytes: refuse an image whose decode would cost more memory than this, from its
            header, before decoding it (:func:`decode_budget` gives a worker's share).

    Raises:
        ImageRejected: with the reason, for anything that cannot be read safely.
    """
    if not data:
        raise ImageRejected("file is empty (0 bytes)")
    kind = sniff(data[:132], name)
    if kind is None:
        raise ImageRejected("not a PNG, JPEG or DICOM file (unrecognised content)")
    if kind == "dicom":
        image = _decode_dicom(
            data,
            max_pixels=max_pixels,
            modalities=frozenset(modalities),
            force=data[128:132] != b"DICM",
            max_decoded_bytes=max_decoded_bytes,
        )
    else:
        image = _decode_raster(data, kind, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes)
    pixels = image.pixels
    if not np.isfinite(pixels).all():
        raise ImageRejected("image holds non-finite values")
    if float(pixels.max() - pixels.min()) < 1e-6:
        raise ImageRejected("image is blank (every pixel has the same value)")
    return image


def read_image(
    path: Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    modalities: Iterable[str] = RADIOGRAPH_MODALITIES,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> DecodedImage:
    """Read and decode the image at ``path`` (see :func:`decode`)."""
    return decode(
        read_file(path, max_bytes=max_bytes),
        name=Path(path).name,
        max_pixels=max_pixels,
        modalities=modalities,
        max_decoded_bytes=max_decoded_bytes,
    )


def resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize a [0, 1] grayscale array to ``size`` x ``size`` (area-averaged when shrinking), float32."""
    from PIL import Image

    if pixels.shape == (size, size):
        return pixels.astype(np.float32, copy=False)
    img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F")
    # Shrink in integer steps first (fast, exact box average), then resample the rest bilinearly.
    factor = min(img.width // size, img.height // size)
    if factor >= 2:
        img = img.reduce(factor)
    out = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def load_for_model(path: Path, size: int, **limits) -> tuple[np.ndarray, DecodedImage]:
    """Read ``path`` and resize it to the model input: ``(size x size float32, the decoded image)``."""
    image = read_image(path, **limits)
    return resize(image.pixels, size), image


# --------------------------------------------------------------------------- PNG / JPEG


def _decode_raster(data: bytes, kind: str, *, max_pixels: int, max_decoded_bytes: int) -> DecodedImage:
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = kind.upper()
    flags: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageRejected(f"{label} declares an empty image ({width}x{height})")
            if width * height > max_pixels:
                raise ImageRejected(
                    f"{label} is {width}x{height} = {width * height / 1e6:.0f} M pixels, over the "
                    f"{max_pixels / 1e6:.0f} M limit (too large to decode safely)"
                )
            cost = decode_cost(width, height, img.mode)
            if cost > max_decoded_bytes:
                raise ImageRejected(
                    f"{label} is {width}x{height} {img.mode}: decoding it needs about {cost / 2**20:,.0f} MiB, over "
                    f"the {max_decoded_bytes / 2**20:,.0f} MiB memory budget of one decode (the worker's memory "
                    "limit shared by its decode threads)"
                )
            if getattr(img, "n_frames", 1) > 1:
                flags.append(f"{img.n_frames} frames: the first was used")
            img.load()
            if kind == "jpeg":
                img = ImageOps.exif_transpose(img) or img
            if _constant(img):  # before any float copy: a blank image costs its decoded buffer only
                raise ImageRejected("image is blank (every pixel has the same value)")
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"{label} is too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise ImageRejected(f"{label} header is corrupt: not a readable image") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageRejected(f"{label} is {reason}: {exc}") from None
    pixels = _raster_to_gray(img, flags)
    return DecodedImage(pixels=pixels, kind=kind, original_shape=pixels.shape, flags=flags)


def _constant(img) -> bool:
    """Whether every band of a decoded Pillow image holds one value (cheap: no copy of the pixels)."""
    try:
        bands = img.getextrema()
    except Exception:  # noqa: BLE001 - a mode without extrema: the later check on the array decides
        return False
    if not isinstance(bands[0], tuple):
        bands = (bands,)
    return all(lo == hi for lo, hi in bands)


def _raster_to_gray(img, flags: list[str]) -> np.ndarray:
    mode = img.mode
    if mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        if mode not in ("1", "L", "LA", "La"):
            if mode in ("P", "PA"):
                img = img.convert("RGBA" if "transparency" in img.info or mode == "PA" else "RGB")
            if not _is_gray(img):
                flags.append(f"colour image ({mode}) converted to grayscale")
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    arr = np.asarray(img)
    if arr.dtype == np.uint16 or mode.startswith("I;16"):
        return arr.astype(np.float32) / 65535.0
    if np.issubdtype(arr.dtype, np.integer):  # 32-bit integer PNG data ("I" mode): stretch its own range
        flags.append("32-bit integer image: intensities scaled to their own range")
        return _stretch(arr.astype(np.float64))
    if np.issubdtype(arr.dtype, np.floating):
        flags.append("floating-point image: intensities scaled to their own range")
        return _stretch(arr.astype(np.float64))
    raise ImageRejected(f"image mode {mode} is not supported")


def _is_gray(img) -> bool:
    if img.mode not in ("RGB", "RGBA", "RGBX"):
        return False
    arr = np.asarray(img.convert("RGB"))
    return bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())


def _stretch(arr: np.ndarray, lo_pct: float = 0.0, hi_pct: float = 100.0) -> np.ndarray:
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        raise ImageRejected("image holds no finite values")
    lo, hi = (
        np.percentile(finite, [lo_pct, hi_pct]) if (lo_pct, hi_pct) != (0.0, 100.0) else (finite.min(), finite.max())
    )
    if hi - lo <= 0:
        raise ImageRejected("image is blank (every pixel has the same value)")
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- DICOM


def _decode_dicom(
    data: bytes, *, max_pixels: int, modalities: frozenset[str], force: bool, max_decoded_bytes: int
) -> DecodedImage:
    """pydicom parses elements lazily, so a corrupt element can raise on first access, anywhere below:
    anything but our own refusal is a corrupt header, reported as such."""
    try:
        return _decode_dicom_checked(
            data, max_pixels=max_pixels, modalities=modalities, force=force, max_decoded_bytes=max_decoded_bytes
        )
    except ImageRejected:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile bytes: never more than an item error
        raise ImageRejected(f"DICOM is corrupt: {type(exc).__name__}: {exc}") from None


def _decode_dicom_checked(
    data: bytes, *, max_pixels: int, modalities: frozenset[str], force: bool, max_decoded_bytes: int
) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError

    flags: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=force)
    except InvalidDicomError as exc:
        raise ImageRejected(f"not a valid DICOM file: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on hostile input
        raise ImageRejected(f"DICOM header is corrupt or truncated: {type(exc).__name__}: {exc}") from None
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = str(ds.get("SOPClassUID", "")) and getattr(ds.get("SOPClassUID"), "name", "")
        raise ImageRejected(f"DICOM has no pixel data{f' ({sop})' if sop else ''}: not an image")
    modality = str(ds.get("Modality", "") or "").strip().upper() or None
    if modality is None:
        flags.append("DICOM states no modality: read as a radiograph")
    elif modality not in modalities:
        raise ImageRejected(
            f"DICOM modality {modality} is not a radiograph (accepted: {', '.join(sorted(modalities))})"
        )
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits_allocated = int(ds.get("BitsAllocated", 16) or 16)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageRejected(f"DICOM image geometry is missing or invalid: {exc}") from None
    if rows <= 0 or cols <= 0:
        raise ImageRejected(f"DICOM declares an empty image ({cols}x{rows})")
    if rows * cols > max_pixels:
        raise ImageRejected(
            f"DICOM is {cols}x{rows} = {rows * cols / 1e6:.0f} M pixels, over the {max_pixels / 1e6:.0f} M limit"
        )
    decoded_bytes = rows * cols * frames * samples * max(1, bits_allocated // 8)
    if decoded_bytes > max_decoded_bytes:
        raise ImageRejected(f"DICOM holds {decoded_bytes / 2**30:.1f} GiB of pixels ({frames} frames): too large")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if photometric == "PALETTE COLOR":
        raise ImageRejected("palette-colour DICOM is not a radiograph")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - missing codec, truncated pixel data, bad geometry
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
        raise ImageRejected(f"DICOM pixel data cannot be decoded ({name}): {type(exc).__name__}: {exc}") from None
    if frames > 1:
        arr = arr[0]
        flags.append(f"{frames} frames: the first was used")
    if samples > 1 or arr.ndim == 3:
        flags.append(f"colour DICOM ({photometric}) converted to grayscale")
        rgb = arr.astype(np.float64)  # pydicom hands YBR data over already converted to RGB
        return DecodedImage(
            pixels=_stretch(rgb @ np.array([0.299, 0.587, 0.114])),
            kind="dicom",
            original_shape=(rows, cols),
            flags=flags,
            modality=modality,
        )
    pixels = _dicom_gray(ds, arr, photometric, flags)
    return DecodedImage(pixels=pixels, kind="dicom", original_shape=(rows, cols), flags=flags, modality=modality)


def _dicom_gray(ds, arr: np.ndarray, photometric: str, flags: list[str]) -> np.ndarray:
    """Modality LUT (rescale slope/intercept), then the VOI LUT or window, then polarity, into [0, 1]."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    values = apply_modality_lut(arr, ds).astype(np.float64)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        try:
            lut_input = np.rint(values).astype(np.int64) if "VOILUTSequence" in ds else values
            voi = apply_voi_lut(lut_input, ds, index=0, prefer_lut=True)
            lo, hi = _voi_output_range(ds)
            pixels = np.clip((np.asarray(voi, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
            if float(pixels.max() - pixels.min()) < 1e-6:  # a window that misses the data entirely
                raise ValueError("window leaves a blank image")
        except Exception as exc:  # noqa: BLE001 - a broken VOI LUT or window: fall back, and say so
            flags.append(f"window/VOI LUT unusable ({type(exc).__name__}): intensities stretched to 0.5-99.5%")
            pixels = _stretch(values, 0.5, 99.5)
    else:
        flags.append("no window or VOI LUT in the header: intensities stretched to 0.5-99.5%")
        pixels = _stretch(values, 0.5, 99.5)
    if photometric == "MONOCHROME1":  # low values are white: invert to air dark, bone bright
        pixels = 1.0 - pixels
    return pixels.astype(np.float32)


def _voi_output_range(ds) -> tuple[float, float]:
    """The range the VOI LUT or window maps into, so the window's own edges become 0 and 1.

    For a window the range is found by windowing two extreme values (pydicom clips them to its output
    range, which depends on bits stored, signedness and any rescale); a VOI LUT spans its entry depth.
    """
    from pydicom.pixels import apply_voi_lut

    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    lo, hi = (float(v) for v in apply_voi_lut(np.array([-1e12, 1e12]), ds, index=0, prefer_lut=False))
    if not hi > lo:
        raise ValueError("window output range is empty")
    return lo, hi
