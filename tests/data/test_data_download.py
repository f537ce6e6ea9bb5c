"""Downloads: checksums verified, nothing half-written left behind, offline failure is fast and helpful."""

from __future__ import annotations

import hashlib
import io
import time
import urllib.error
import urllib.request

import pytest

from prunelab.data import download
from prunelab.data.mnist import Mnist
from prunelab.errors import DataError, UnknownNameError


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("PRUNELAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_offline_fails_fast_with_other_ways(tmp_path, monkeypatch):
    calls = []

    def offline(url, timeout):
        calls.append((url, timeout))
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        download("fashion-mnist", timeout=3)
    assert time.monotonic() - start < 1
    message = str(info.value)
    assert "could not download fashion-mnist" in message and "name resolution" in message
    for way in ("--data-dir", "$PRUNELAB_DATA", "FashionMNIST/raw", "apt-get install dataset-fashion-mnist"):
        assert way in message
    assert "prunelab data get" not in message  # that is what just failed
    assert calls == [
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz", 3)
    ]


def test_timeout_is_a_data_error(monkeypatch):
    def slow(url, timeout):
        raise TimeoutError("timed out")

    monkeypatch.setattr(urllib.request, "urlopen", slow)
    with pytest.raises(DataError, match=r"could not download cifar10 from https://www.cs.toronto.edu"):
        download("cifar10")


def test_checksum_mismatch_removes_temp_file(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"not the real file"))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz is corrupt: md5 .* differs"):
        download("mnist", dest_root=tmp_path / "data")
    assert list((tmp_path / "data" / "mnist").iterdir()) == []


def test_verified_files_land_in_place(tmp_path, monkeypatch):
    contents = {name: f"content of {name}".encode() for name, _, _ in Mnist.downloads}
    fake = tuple((name, "sha256", hashlib.sha256(data).hexdigest()) for name, data in contents.items())
    monkeypatch.setattr(Mnist, "downloads", fake)
    fetched = []

    def serve(url, timeout):
        fetched.append(url)
        return io.BytesIO(contents[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    dest = download("mnist")
    assert dest == tmp_path / "cache" / "prunelab" / "datasets" / "mnist"
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == contents
    assert len(fetched) == 4
    download("mnist")  # already there with the right checksums: nothing fetched
    assert len(fetched) == 4


def test_builtin_datasets_need_no_download():
    for name in ("digits", "synthetic"):
        with pytest.raises(DataError, match=rf"'{name}' needs no download"):
            download(name)


def test_unknown_dataset():
    with pytest.raises(UnknownNameError, match=r"Valid datasets"):
        download("imagenet")
