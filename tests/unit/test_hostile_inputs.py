"""Hostile input files, one at a time: special files, endless lines, bad request values, decode bombs.
Each is refused with a reason, quickly and in bounded memory; none raises anything but InvalidInput/ImageRejected."""

from __future__ import annotations

import io
import json
import os
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medbatch.errors import InvalidInput
from medbatch.ml import images
from medbatch.nightly import _read_request
from medbatch.producer.csvtext import MAX_LINE_CHARS
from medbatch.producer.generation import request_from_json
from medbatch.producer.paths import open_regular
from medbatch.producer.records import iter_record_chunks, read_header

HEADER = "patient_id,age,bmi,exercise_frequency,smoking_history"


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.csv"
    os.mkfifo(path)
    return path


# --------------------------------------------------------------------------- special files


def test_a_fifo_or_a_device_is_refused_without_blocking_or_reading(tmp_path, fifo):
    # A FIFO with no writer would block open() forever; /dev/zero never ends
    zero = tmp_path / "zero.csv"
    os.symlink("/dev/zero", zero)
    for path, kind in [(fifo, r"FIFO \(named pipe\)"), (zero, "character device"), (tmp_path, "folder")]:
        with pytest.raises(InvalidInput, match=f"is a {kind}, not a regular file"):
            open_regular(path)
        with pytest.raises(InvalidInput, match="not a regular file"):
            read_header(path, "risk")


def test_a_regular_file_opens_and_reads(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("x")
    with open_regular(path) as fh:
        assert fh.read() == b"x"


# --------------------------------------------------------------------------- endless lines


def test_a_csv_without_line_breaks_is_refused_in_bounded_memory(tmp_path):
    # 24 MiB with no newline: the header read used to hold the whole "line" (3.7 GB from /dev/zero)
    path = tmp_path / "one-line.csv"
    with path.open("w") as fh:
        for _ in range(24):
            fh.write("a," * (1 << 19))
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput, match="line longer than"):
            read_header(path, "risk")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_LINE_CHARS * 4, f"peak {peak / 2**20:.1f} MiB"


def test_an_endless_line_after_good_rows_ends_the_file_with_a_reason(tmp_path):
    path = tmp_path / "tail.csv"
    with path.open("w") as fh:
        fh.write(f"{HEADER}\nP1,54,27.5,3,0\nP2,")
        for _ in range(8):
            fh.write("9" * (1 << 20))
    tracemalloc.start()
    try:
        chunks = list(iter_record_chunks(path, "risk"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    items = [i for c in chunks for i in c.items]
    rejected = [r for c in chunks for r in c.rejected]
    assert [i["patient_ref"] for i in items] == ["P1"]
    assert len(rejected) == 1 and rejected[0]["source_row"] == 3 and "line longer than" in rejected[0]["reason"]
    assert peak < 4 * MAX_LINE_CHARS * 4, f"peak {peak / 2**20:.1f} MiB"


# --------------------------------------------------------------------------- molecule requests


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"count": 1e400}', "whole number"),
        ('{"count": 1.9}', "whole number"),
        ('{"count": "10"}', "whole number"),
        ('{"count": true}', "whole number"),
        ('{"count": -5}', "whole number"),
        ('{"count": 100000000000000000000000000000}', "whole number"),
        ('{"count": NaN}', "whole number"),
        ('{"count": 10, "seed": 1.5}', "seed"),
        ('{"count": 10, "seed": 1e400}', "seed"),
        ('{"count": 10, "temperature": "hot"}', "temperature"),
        ('{"count": 10, "temperature": Infinity}', "temperature"),
        ('{"count": ' + "9" * 5000 + "}", "not a JSON"),
        ("[" * 5_000 + "]" * 5_000, "not a JSON"),
        ('{"count": 10, "x": "' + "y" * 100_000 + '"}', "larger than"),
        ("[1, 2]", "expected"),
    ],
)
def test_a_hostile_molecule_request_is_refused_with_a_reason(tmp_path, text, words):
    path = tmp_path / "req.json"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=words):
        _read_request(path)


def test_whole_numbers_written_as_floats_are_taken_and_fractions_are_not():
    assert request_from_json({"count": 1000.0, "seed": 3})["count"] == 1000
    with pytest.raises(InvalidInput, match="whole number"):
        request_from_json({"count": 1000.5})


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["count", "seed", "temperature", "other"]),
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5) | st.lists(st.integers()),
    )
)
def test_any_request_value_is_taken_or_refused_never_crashes(data):
    try:
        request = request_from_json(data)
    except InvalidInput:
        return
    assert type(request["count"]) is int and request["count"] >= 1
    assert type(request["seed"]) is int and type(request["temperature"]) is float


# --------------------------------------------------------------------------- decode cost


def _png(width: int, height: int, mode: str = "L") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_cost_is_bounded_from_the_header_before_decoding():
    data = _png(3000, 3000, "RGBA")  # 9 M pixels x 4 channels: a few KB of zlib
    with pytest.raises(images.ImageRejected, match="memory budget") as info:
        images.decode(data, max_decoded_bytes=64 * 2**20)
    assert "3000x3000" in str(info.value)
    # within the budget the same image is decoded (and refused as blank, as before)
    with pytest.raises(images.ImageRejected, match="blank"):
        images.decode(data, max_decoded_bytes=2**30)


def test_a_blank_image_is_refused_before_its_float_copies_are_made():
    # 9400x9400 zeros cost ~845 MB before they were refused as blank; 3000x3000 shows the same in small
    data = _png(3000, 3000)
    tracemalloc.start()
    try:
        with pytest.raises(images.ImageRejected, match="blank"):
            images.decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3000 * 3000 * 2, f"peak {peak / 2**20:.1f} MiB of traced arrays for a blank image"


def test_the_decode_budget_follows_the_child_memory_limit_and_the_threads():
    # each decode thread gets its share of the child's limit, never more than the fixed cap
    assert images.decode_budget(2048 * 2**20, 4) == 512 * 2**20
    assert images.decode_budget(6144 * 2**20, 4) == images.DEFAULT_MAX_DECODED_BYTES
    assert images.decode_budget(0, 4) == images.DEFAULT_MAX_DECODED_BYTES  # no child limit: the fixed cap


def test_a_real_radiograph_still_decodes():
    rng = np.random.default_rng(0)
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 65535, (512, 640), dtype=np.uint16)).save(buf, format="PNG")
    image = images.decode(buf.getvalue(), max_decoded_bytes=64 * 2**20)
    assert image.pixels.shape == (512, 640) and image.pixels.dtype == np.float32
    assert 0.0 <= float(image.pixels.min()) < float(image.pixels.max()) <= 1.0
    assert json.dumps(image.flags)


def test_a_fifo_among_images_is_refused_without_blocking(tmp_path, fifo):
    from medbatch.producer.images import iter_image_chunks, list_images

    os.rename(fifo, tmp_path / "pipe.png")
    scan = list_images(tmp_path, include=("*.png",))
    rejected = [r for c in iter_image_chunks(scan) for r in c.rejected]
    assert [r["reason"] for r in rejected] == ["a FIFO (named pipe), not a regular file: only regular files are read"]
