"""CIFAR-10: binary and python batches agree, archives extract safely, pickles never run code."""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from prunelab.data import dataset_status, load_dataset
from prunelab.data.unpickle import safe_unpickle
from prunelab.errors import DataError

PER_BATCH = 20  # real record shape (1 + 3072 bytes), few records


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("PRUNELAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def batches(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {
        n: (rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8), rng.integers(0, 10, PER_BATCH))
        for n in names
    }


def write_bin(folder: Path, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (pixels, labels) in data.items():
        records = np.concatenate([labels.astype(np.uint8)[:, None], pixels], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    return folder


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 byte strings, as in the official CIFAR-10 python batches."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_str8(self, obj: str | bytes) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else obj
        n = len(data)
        short = n < 256
        self.write(pickle.SHORT_BINSTRING + bytes([n]) if short else pickle.BINSTRING + struct.pack("<i", n))
        self.write(data)
        self.memoize(obj)

    dispatch[bytes] = save_str8
    dispatch[str] = save_str8


def write_py(folder: Path, data: dict, py2: bool = False) -> Path:
    """Python batches: dicts with bytes keys; ``py2`` imitates the official files (protocol 2, numpy.core)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (pixels, labels) in data.items():
        batch = {
            b"batch_label": b"x",
            b"labels": [int(v) for v in labels],
            b"data": pixels,
            b"filenames": [b"a"],
        }
        if py2:
            buffer = io.BytesIO()
            Py2Pickler(buffer, protocol=2).dump(batch)
            blob = buffer.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        else:
            blob = pickle.dumps(batch, protocol=4)
        (folder / name).write_bytes(blob)
    return folder


def expected(data: dict) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = np.concatenate([data[f"data_batch_{i}"][0] for i in range(1, 6)])
    x = torch.from_numpy(pixels).float().div(255).reshape(-1, 3, 32, 32)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(
        np.concatenate([data[f"data_batch_{i}"][1] for i in range(1, 6)])
    )


def full(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """Train + val back in the original order (the split indices are sorted, val first in the perm)."""
    from prunelab.data import split_indices

    train_idx, val_idx = split_indices(len(ds.train) + len(ds.val), len(ds.val))
    order = torch.argsort(torch.cat([train_idx, val_idx]))
    return torch.cat([ds.train.x, ds.val.x])[order], torch.cat([ds.train.y, ds.val.y])[order]


def test_binary_and_python_versions_agree(tmp_path):
    data = batches()
    bin_ds = load_dataset(
        "cifar10", write_bin(tmp_path / "a" / "cifar-10-batches-bin", data).parent, val_size=10
    )
    py_ds = load_dataset(
        "cifar10", write_py(tmp_path / "b" / "cifar-10-batches-py", data).parent, val_size=10
    )
    assert (len(bin_ds.train), len(bin_ds.val), len(bin_ds.test)) == (90, 10, 20)
    for a, b in ((bin_ds.train, py_ds.train), (bin_ds.val, py_ds.val), (bin_ds.test, py_ds.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    x, y = expected(data)
    fx, fy = full(bin_ds)
    torch.testing.assert_close(fx, x)
    assert torch.equal(fy, y)
    assert bin_ds.train.x.shape[1:] == (3, 32, 32) and bin_ds.info.augment


def test_python2_style_pickles_load(tmp_path):
    data = batches()
    folder = write_py(tmp_path / "cifar-10-batches-py", data, py2=True)
    blob = (folder / "test_batch").read_bytes()
    assert blob.startswith(b"\x80\x02") and b"numpy.core.multiarray\n_reconstruct" in blob
    ds = load_dataset("cifar10", folder, val_size=0)
    assert torch.equal(ds.test.y, torch.from_numpy(data["test_batch"][1]))
    x, _ = expected(data)
    torch.testing.assert_close(ds.train.x, x)


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    folder = write_py(tmp_path / "cifar-10-batches-py", batches())
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": Exploit(marker), b"labels": []}))
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|nt|os)\.system from .*data_batch_3"):
        load_dataset("cifar10", tmp_path, val_size=0)
    assert not marker.exists()


def test_unpickler_refuses_other_globals(tmp_path):
    path = tmp_path / "p"
    path.write_bytes(pickle.dumps({"a": io.BytesIO}))
    with pytest.raises(DataError, match=r"refusing to unpickle _io\.BytesIO"):
        safe_unpickle(path)
    path.write_bytes(pickle.dumps({b"data": [1, 2.5, b"x"], "n": None}, protocol=4))
    assert safe_unpickle(path) == {b"data": [1, 2.5, b"x"], "n": None}
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match=r"not a readable pickle"):
        safe_unpickle(path)


def test_binary_size_not_multiple_of_record(tmp_path):
    folder = write_bin(tmp_path / "cifar-10-batches-bin", batches())
    path = folder / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"data_batch_2.bin holds .* not a whole number of 3073-byte"):
        load_dataset("cifar10", folder, val_size=0)


def test_python_batch_wrong_columns(tmp_path):
    data = batches()
    data["test_batch"] = (data["test_batch"][0][:, :3000], data["test_batch"][1])
    folder = write_py(tmp_path / "cifar-10-batches-py", data)
    with pytest.raises(DataError, match=r"test_batch holds data of shape \(20, 3000\)"):
        load_dataset("cifar10", folder, val_size=0)


def test_bad_labels(tmp_path):
    data = batches()
    data["data_batch_1"][1][0] = 10
    folder = write_bin(tmp_path / "cifar-10-batches-bin", data)
    with pytest.raises(DataError, match=r"data_batch_1.bin holds labels \d\.\.10"):
        load_dataset("cifar10", folder, val_size=0)


def make_archive(path: Path, folder: Path, extra: tarfile.TarInfo | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size) if extra.isfile() else None)
    return path


def test_archive_extracted_into_cache(tmp_path):
    data = batches()
    folder = write_bin(tmp_path / "src" / "cifar-10-batches-bin", data)
    (tmp_path / "dl").mkdir()
    make_archive(tmp_path / "dl" / "cifar-10-binary.tar.gz", folder)
    assert dataset_status("cifar10", tmp_path / "dl") == (
        True,
        f"{tmp_path / 'dl' / 'cifar-10-binary.tar.gz'} (archive, extracted on first load)",
    )
    ds = load_dataset("cifar10", tmp_path / "dl", val_size=0)
    extracted = tmp_path / "cache" / "prunelab" / "datasets" / "cifar10" / "cifar-10-batches-bin"
    assert sorted(p.name for p in extracted.iterdir())[0] == "data_batch_1.bin"
    assert torch.equal(ds.test.y, torch.from_numpy(data["test_batch"][1]))
    # Later loads find the extracted copy in the cache; the archive is no longer needed.
    (tmp_path / "dl" / "cifar-10-binary.tar.gz").unlink()
    assert load_dataset("cifar10", val_size=0).source == str(extracted)


@pytest.mark.parametrize("name", ["../evil", "/tmp/evil", "cifar-10-batches-py/../../evil"])
def test_archive_path_traversal_refused(tmp_path, name):
    folder = write_py(tmp_path / "src" / "cifar-10-batches-py", batches())
    (tmp_path / "dl").mkdir()
    member = tarfile.TarInfo(name)
    member.size = 1
    make_archive(tmp_path / "dl" / "cifar-10-python.tar.gz", folder, member)
    with pytest.raises(DataError, match=r"points outside the destination"):
        load_dataset("cifar10", tmp_path / "dl", val_size=0)
    assert not (tmp_path / "evil").exists()


def test_archive_symlink_refused(tmp_path):
    folder = write_py(tmp_path / "src" / "cifar-10-batches-py", batches())
    (tmp_path / "dl").mkdir()
    member = tarfile.TarInfo("cifar-10-batches-py/link")
    member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
    make_archive(tmp_path / "dl" / "cifar-10-python.tar.gz", folder, member)
    with pytest.raises(DataError, match=r"is a link or special file"):
        load_dataset("cifar10", tmp_path / "dl", val_size=0)


def test_truncated_archive(tmp_path):
    folder = write_bin(tmp_path / "src" / "cifar-10-batches-bin", batches())
    (tmp_path / "dl").mkdir()
    archive = make_archive(tmp_path / "dl" / "cifar-10-binary.tar.gz", folder)
    archive.write_bytes(archive.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"cifar-10-binary.tar.gz is not a readable archive"):
        load_dataset("cifar10", tmp_path / "dl", val_size=0)
    assert not list((tmp_path / "cache" / "prunelab" / "datasets" / "cifar10").glob("cifar-10-batches-*"))
