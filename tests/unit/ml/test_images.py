"""The radiograph reader: PNG, JPEG and real DICOM files in, one display convention out; hostile files refused."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from medbatch.ml import images
from medbatch.ml.images import ImageRejected, decode, read_image, resize
from medbatch.producer.synthetic import synthetic_xray, write_synthetic_dicom

data_store = pytest.importorskip("data_store", reason="pydicom-data holds the real DICOM test files")
DICOM_DIR = Path(data_store.__file__).parent / "data"


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _lung_and_spine_means(pixels: np.ndarray) -> tuple[float, float]:
    h, w = pixels.shape
    spine = pixels[int(0.3 * h) : int(0.7 * h), int(0.46 * w) : int(0.54 * w)].mean()
    lungs = np.concatenate(
        [
            pixels[int(0.3 * h) : int(0.6 * h), int(0.2 * w) : int(0.35 * w)].ravel(),
            pixels[int(0.3 * h) : int(0.6 * h), int(0.65 * w) : int(0.8 * w)].ravel(),
        ]
    ).mean()
    return float(lungs), float(spine)


def test_real_cr_chest_radiograph_monochrome1_reads_with_air_dark():
    # Given RG1_UNCR.dcm: a real CR chest radiograph, MONOCHROME1 (low values white), 15 bits stored
    image = read_image(DICOM_DIR / "RG1_UNCR.dcm")
    # Then it is inverted into display polarity: lung fields darker than the mediastinum and spine
    lungs, spine = _lung_and_spine_means(image.pixels)
    assert image.kind == "dicom" and image.modality == "CR"
    assert image.original_shape == (1955, 1841)
    assert image.pixels.dtype == np.float32 and 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0
    assert spine > lungs + 0.1, (lungs, spine)
    assert image.flags == []


def test_compressed_transfer_syntaxes_decode_to_the_same_pixels():
    # JPEG 2000 lossless through the openjpeg plugin gives exactly the uncompressed pixels
    plain = read_image(DICOM_DIR / "RG1_UNCR.dcm").pixels
    j2k = read_image(DICOM_DIR / "RG1_J2KR.dcm").pixels
    np.testing.assert_array_equal(plain, j2k)
    lossy = read_image(DICOM_DIR / "RG1_J2KI.dcm").pixels  # lossy: close, not equal
    assert np.abs(plain - lossy).mean() < 0.01


def test_jpeg_lossless_dicom_through_libjpeg():
    image = read_image(DICOM_DIR / "JPEG-LL.dcm", modalities={"NM"})
    assert image.pixels.shape == (1024, 256) and image.pixels.std() > 0.01


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("MR2_UNCR.dcm", "modality MR is not a radiograph"),
        ("693_J2KR.dcm", "modality CT is not a radiograph"),
        ("OT-PAL-8-face.dcm", "not a radiograph"),
        ("emri_small_jpeg_2k_lossless_too_short.dcm", "DICOM"),
    ],
)
def test_dicom_that_is_not_a_radiograph_is_refused_with_a_reason(name, reason):
    with pytest.raises(ImageRejected, match=reason):
        read_image(DICOM_DIR / name)


def test_dicom_without_pixel_data_is_refused(tmp_path):
    import pydicom

    ds = pydicom.dcmread(DICOM_DIR / "RG1_UNCR.dcm")
    del ds.PixelData
    path = tmp_path / "nopixels.dcm"
    ds.save_as(path)
    with pytest.raises(ImageRejected, match="no pixel data"):
        read_image(path)


def test_synthetic_monochrome1_dicom_round_trips_with_its_window(tmp_path):
    pixels = synthetic_xray(1, 64, np.random.default_rng(0))
    path = write_synthetic_dicom(tmp_path / "x.dcm", pixels)
    image = read_image(path)
    assert image.modality == "CR" and image.flags == []
    assert np.abs(image.pixels - pixels).max() < 2 / 4095 + 1e-6  # 12-bit quantisation only


def test_png_8_and_16_bit_and_colour():
    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    eight = decode(_png((ramp * 255).astype(np.uint8)))
    sixteen = decode(_png((ramp * 65535).astype(np.uint16)))
    assert np.abs(eight.pixels - ramp).max() < 1 / 255 + 1e-6
    assert np.abs(sixteen.pixels - ramp).max() < 1e-4
    rgb = np.stack([(ramp * 255).astype(np.uint8), np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8)], -1)
    colour = decode(_png(rgb))
    assert any("colour" in f for f in colour.flags)
    grey_rgb = np.repeat((ramp * 255).astype(np.uint8)[..., None], 3, axis=-1)
    assert decode(_png(grey_rgb)).flags == []  # an RGB file holding a grey image is not flagged


def test_jpeg_exif_orientation_is_applied():
    arr = np.zeros((40, 80), np.uint8)
    arr[:, :40] = 255  # bright left half, landscape
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    out = decode(buf.getvalue())
    assert out.kind == "jpeg" and out.pixels.shape == (80, 40)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"hello, this is a text file\n", "not a PNG, JPEG or DICOM"),
        (images.PNG_MAGIC + b"\0" * 20, "PNG"),
        (images.JPEG_MAGIC + b"\0" * 50, "JPEG"),
    ],
)
def test_non_images_and_broken_headers_are_refused(data, reason):
    with pytest.raises(ImageRejected, match=reason):
        decode(data)


def test_truncated_png_is_refused_as_truncated():
    full = _png((np.random.default_rng(0).random((200, 200)) * 255).astype(np.uint8))
    with pytest.raises(ImageRejected, match="truncated|corrupt"):
        decode(full[: len(full) // 2])


def test_decompression_bomb_is_refused_before_decoding():
    # A well-formed PNG declaring 100,000 x 100,000 pixels (10 G) with a few bytes of data behind it
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    png = images.PNG_MAGIC + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    with pytest.raises(ImageRejected, match="too large|over the"):
        decode(png)


def test_oversized_dicom_geometry_is_refused_before_decoding(tmp_path):
    import pydicom

    ds = pydicom.dcmread(DICOM_DIR / "RG1_UNCR.dcm")
    path = tmp_path / "big.dcm"
    ds.save_as(path)
    with pytest.raises(ImageRejected, match="over the"):
        read_image(path, max_pixels=1000 * 1000)


def test_blank_image_is_refused():
    with pytest.raises(ImageRejected, match="blank"):
        decode(_png(np.full((32, 32), 7, np.uint8)))


def test_resize_shrinks_any_size_to_the_model_input():
    big = np.random.default_rng(1).random((1955, 1841)).astype(np.float32)
    out = resize(big, 150)
    assert out.shape == (150, 150) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert abs(float(out.mean()) - float(big.mean())) < 0.01


def test_files_on_disk_empty_and_missing(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageRejected, match="empty"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(ImageRejected, match="not found"):
        read_image(tmp_path / "gone.png")


# --------------------------------------------------------------------------- fuzz


def _synthetic_dicom_bytes() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = write_synthetic_dicom(Path(tmp) / "seed.dcm", synthetic_xray(1, 48, np.random.default_rng(3)))
        return path.read_bytes()


_SEEDS = {
    "png": _png((synthetic_xray(0, 48, np.random.default_rng(2)) * 255).astype(np.uint8)),
    "dicom": _synthetic_dicom_bytes(),
    "jpeg_dicom": (DICOM_DIR / "JPEG-LL.dcm").read_bytes(),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(_SEEDS)),
    edits=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), max_size=12),
    cut=st.one_of(st.none(), st.integers(0, 10**9)),
)
@example(kind="dicom", edits=[(529, 0)], cut=None)  # found by this test: a lazily parsed, corrupt VR
def test_fuzzed_files_are_either_read_or_refused_with_a_reason(kind, edits, cut):
    # Given a valid PNG or DICOM with random bytes overwritten and maybe cut short
    data = bytearray(_SEEDS[kind])
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    # When it is decoded, then it is a valid image or an ImageRejected: never another exception
    try:
        name = "x.png" if kind == "png" else "x.dcm"
        image = decode(bytes(data), name=name, max_pixels=4_000_000, modalities={"CR", "NM"})
    except ImageRejected as exc:
        assert str(exc)
    else:
        assert image.pixels.ndim == 2 and np.isfinite(image.pixels).all()
        assert 0.0 <= image.pixels.min() and image.pixels.max() <= 1.0
