"""``ml/artifacts.py``: the one streaming SHA-256 of a file."""

from __future__ import annotations

import hashlib
import os

import pytest

from medbatch.ml.artifacts import HASH_BLOCK_BYTES, file_digest, file_sha256


@pytest.mark.parametrize(
    "size", [0, 1, 131, HASH_BLOCK_BYTES - 1, HASH_BLOCK_BYTES, HASH_BLOCK_BYTES + 1, 3 * HASH_BLOCK_BYTES + 7]
)
@pytest.mark.parametrize("head_bytes", [0, 132, 1 << 16])
def test_file_digest_is_the_sha256_of_every_byte_and_its_head_the_first_bytes(tmp_path, size, head_bytes):
    data = os.urandom(size)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    digest, head = file_digest(path, head_bytes=head_bytes)
    assert digest == hashlib.sha256(data).hexdigest() == file_sha256(path)
    assert head == data[:head_bytes]
