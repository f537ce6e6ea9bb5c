"""IDX reading: round trips and every kind of damaged file fails with the file's name."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from prunelab.data import read_idx, write_idx
from prunelab.errors import DataError


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("shape", [(7,), (5, 4, 3), (2, 1, 2, 3)])
def test_round_trip(tmp_path, compress, shape):
    array = torch.randint(0, 256, shape, dtype=torch.uint8)
    path = tmp_path / "a-idx"
    write_idx(path, array, gzip=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    out = read_idx(path)
    assert out.dtype == torch.uint8
    assert torch.equal(out, array)


def test_gzip_detected_by_magic_not_suffix(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    plain_named_gz, gz_named_plain = tmp_path / "x.gz", tmp_path / "y"
    write_idx(plain_named_gz, array, gzip=False)
    write_idx(gz_named_plain, array, gzip=True)
    assert torch.equal(read_idx(plain_named_gz), torch.from_numpy(array))
    assert torch.equal(read_idx(gz_named_plain), torch.from_numpy(array))


def test_header_fields(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, np.zeros(5, np.uint8), gzip=False)
    assert path.read_bytes()[:8] == bytes([0, 0, 8, 1, 0, 0, 0, 5])


def test_expected_ndim(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    write_idx(path, np.zeros(5, np.uint8), gzip=False)
    with pytest.raises(DataError, match=r"labels-idx1-ubyte holds a 1-dimensional array"):
        read_idx(path, ndim=3)


@pytest.mark.parametrize("compress", [True, False])
def test_truncated_payload(tmp_path, compress):
    full = bytes([0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 4, 0, 0, 0, 4]) + bytes(100)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(full) if compress else full)
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte.gz is truncated: header says 10x4x4 = 160 .* 100"
    ):
        read_idx(path)


def test_extra_bytes(tmp_path):
    path = tmp_path / "f-idx1"
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 1, 2, 3]))
    with pytest.raises(DataError, match=r"f-idx1 is corrupt.*1 extra"):
        read_idx(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "shorter than the 4-byte"),
        (bytes([0, 0, 8, 3, 0, 0]), "the header needs 16 bytes"),
        (b"\x89PNG\r\n\x1a\n", "bad magic number 0x89504e47"),
        (bytes([0, 0, 8, 0]), "zero dimensions"),
        (bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 0, 0, 0, 0]), r"type 0x0d \(float32\)"),
    ],
)
def test_bad_headers(tmp_path, content, message):
    path = tmp_path / "bad-file"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        read_idx(path)
    assert "bad-file" in str(info.value)


def test_truncated_gzip(tmp_path):
    data = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(range(200)))
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is a truncated gzip"):
        read_idx(path)


def test_corrupt_gzip(tmp_path):
    data = bytearray(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(range(200))))
    data[12:20] = b"\xff" * 8  # inside the deflate stream
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz is a (corrupt|truncated) gzip"):
        read_idx(path)


def test_bad_crc(tmp_path):
    data = bytearray(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3])))
    data[-8] ^= 0xFF  # the CRC32 in the trailer
    path = tmp_path / "crc-idx"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"crc-idx is a corrupt gzip"):
        read_idx(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"cannot read .*nope"):
        read_idx(tmp_path / "nope")


def test_write_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError):
        write_idx(tmp_path / "f", np.zeros(3, np.float32), gzip=False)
