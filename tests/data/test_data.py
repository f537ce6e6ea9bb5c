"""Loading datasets: search order, validation split, normalisation and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunelab.data import (
    DATASETS,
    Dataset,
    candidate_dirs,
    dataset_status,
    load_dataset,
    split_indices,
    write_idx,
)
from prunelab.data.mnist import FashionMnist
from prunelab.errors import DataError, PrunelabError, UnknownNameError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
N_TRAIN, N_TEST = 60, 20


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No user data or cache leaks in: $PRUNELAB_DATA unset, cache in the test's folder."""
    monkeypatch.delenv("PRUNELAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def fake_mnist(folder: Path, compress: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """Write a small MNIST-format dataset (real 28x28 shape, few images) and return its arrays."""
    g = torch.Generator().manual_seed(seed)
    arrays = {
        "train-images-idx3-ubyte": torch.randint(0, 256, (N_TRAIN, 28, 28), generator=g, dtype=torch.uint8),
        "train-labels-idx1-ubyte": torch.randint(0, 10, (N_TRAIN,), generator=g, dtype=torch.uint8),
        "t10k-images-idx3-ubyte": torch.randint(0, 256, (N_TEST, 28, 28), generator=g, dtype=torch.uint8),
        "t10k-labels-idx1-ubyte": torch.randint(0, 10, (N_TEST,), generator=g, dtype=torch.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(folder / (name + ".gz" if compress else name), array, gzip=compress)
    return arrays


def expected(images: torch.Tensor) -> torch.Tensor:
    return ((images.float() / 255 - 0.1307) / 0.3081).unsqueeze(1)


def test_mnist_from_data_dir_split_and_normalisation(tmp_path):
    arrays = fake_mnist(tmp_path / "d")
    ds = load_dataset("mnist", data_dir=tmp_path / "d", val_size=10)
    assert isinstance(ds, Dataset)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50, 10, 20)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert ds.train.x.shape == (50, 1, 28, 28)
    train_idx, val_idx = split_indices(N_TRAIN, 10)
    full_x, full_y = expected(arrays["train-images-idx3-ubyte"]), arrays["train-labels-idx1-ubyte"].long()
    torch.testing.assert_close(ds.train.x, full_x[train_idx])
    torch.testing.assert_close(ds.val.x, full_x[val_idx])
    assert torch.equal(ds.train.y, full_y[train_idx]) and torch.equal(ds.val.y, full_y[val_idx])
    torch.testing.assert_close(ds.test.x, expected(arrays["t10k-images-idx3-ubyte"]))
    assert torch.equal(ds.test.y, arrays["t10k-labels-idx1-ubyte"].long())
    assert ds.source == str(tmp_path / "d")


def test_split_is_fixed_disjoint_and_nested():
    train, val = split_indices(100, 20)
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(100))
    again_train, again_val = split_indices(100, 20)
    assert torch.equal(train, again_train) and torch.equal(val, again_val)
    torch.manual_seed(123)  # the experiment seed must not matter
    assert torch.equal(split_indices(100, 20)[1], val)
    assert set(split_indices(100, 10)[1].tolist()) <= set(val.tolist())


def test_val_size_zero_and_too_large(tmp_path):
    fake_mnist(tmp_path)
    ds = load_dataset("mnist", data_dir=tmp_path, val_size=0)
    assert (len(ds.train), len(ds.val)) == (N_TRAIN, 0)
    assert ds.val.x.shape == (0, 1, 28, 28)
    for bad in (N_TRAIN, N_TRAIN + 1, -1):
        with pytest.raises(DataError, match=r"validation size"):
            load_dataset("mnist", data_dir=tmp_path, val_size=bad)
    with pytest.raises(DataError, match=r"validation size 5000"):  # the default does not fit 60 images
        load_dataset("mnist", data_dir=tmp_path)


@pytest.mark.parametrize("layout", ["direct", "named", "torchvision"])
def test_layouts_via_env(tmp_path, monkeypatch, layout):
    sub = {"direct": "", "named": "mnist", "torchvision": "MNIST/raw"}[layout]
    arrays = fake_mnist(tmp_path / "root" / sub, compress=False)
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "root"))
    ds = load_dataset("mnist", val_size=5)
    assert torch.equal(ds.test.y, arrays["t10k-labels-idx1-ubyte"].long())
    assert dataset_status("mnist") == (True, str(tmp_path / "root" / sub).rstrip("/"))


def test_torchvision_layout_via_data_dir(tmp_path):
    fake_mnist(tmp_path / "tv" / "FashionMNIST" / "raw")
    ds = load_dataset("fashion-mnist", data_dir=str(tmp_path / "tv"), val_size=5)
    assert ds.source == str(tmp_path / "tv" / "FashionMNIST" / "raw")
    assert ds.info.mean == (0.2860,)


def test_search_order_data_dir_before_env_before_cache(tmp_path, monkeypatch):
    fake_mnist(tmp_path / "arg", seed=1)
    fake_mnist(tmp_path / "env", seed=2)
    fake_mnist(tmp_path / "cache" / "prunelab" / "datasets" / "mnist", seed=3)
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "env"))
    assert load_dataset("mnist", data_dir=tmp_path / "arg", val_size=1).source == str(tmp_path / "arg")
    assert load_dataset("mnist", val_size=1).source == str(tmp_path / "env")
    monkeypatch.delenv("PRUNELAB_DATA")
    cache = tmp_path / "cache" / "prunelab" / "datasets" / "mnist"
    assert load_dataset("mnist", val_size=1).source == str(cache)


def test_candidate_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNELAB_DATA", str(tmp_path / "env"))
    dirs = candidate_dirs("fashion-mnist", tmp_path / "arg")
    cache = tmp_path / "cache" / "prunelab" / "datasets"
    assert dirs == [
        tmp_path / "arg",
        tmp_path / "arg" / "fashion-mnist",
        tmp_path / "arg" / "FashionMNIST" / "raw",
        tmp_path / "env",
        tmp_path / "env" / "fashion-mnist",
        tmp_path / "env" / "FashionMNIST" / "raw",
        cache / "fashion-mnist",
        cache / "FashionMNIST" / "raw",
        FASHION_DIR,
    ]
    assert candidate_dirs("digits", tmp_path) == []


def test_missing_data_lists_places_and_ways(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=tmp_path / "nothing")
    message = str(info.value)
    assert isinstance(info.value, PrunelabError)
    assert "'mnist' not found" in message
    for place in candidate_dirs("mnist", tmp_path / "nothing"):
        assert str(place) in message
    for way in ("prunelab data get mnist", "--data-dir", "$PRUNELAB_DATA", "MNIST/raw"):
        assert way in message
    found, how = dataset_status("mnist", tmp_path / "nothing")
    assert not found and "prunelab data get mnist" in how


def test_missing_fashion_mentions_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(FashionMnist, "system_dirs", (tmp_path / "no-such-dir",))
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist") as info:
        load_dataset("fashion-mnist")
    assert str(tmp_path / "no-such-dir") in str(info.value)


def test_incomplete_folder_is_not_found(tmp_path):
    fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"not found"):
        load_dataset("mnist", data_dir=tmp_path)


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        load_dataset("mnsit")
    message = str(info.value)
    for name in ("mnist", "fashion-mnist", "cifar10", "digits", "synthetic"):
        assert name in message
    assert "Did you mean 'mnist'" in message


def test_count_mismatch_names_files(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", torch.zeros(N_TRAIN - 1, dtype=torch.uint8), gzip=True)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz holds 59 labels but train-images.*60"):
        load_dataset("mnist", data_dir=tmp_path, val_size=1)


def test_label_out_of_range_names_file(tmp_path):
    fake_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", torch.full((N_TEST,), 12, dtype=torch.uint8), gzip=True)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz holds label 12"):
        load_dataset("mnist", data_dir=tmp_path, val_size=1)


def test_truncated_file_through_load(tmp_path):
    fake_mnist(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is truncated"):
        load_dataset("mnist", data_dir=tmp_path, val_size=1)


def test_wrong_image_size(tmp_path):
    fake_mnist(tmp_path)
    write_idx(
        tmp_path / "t10k-images-idx3-ubyte.gz", torch.zeros(N_TEST, 32, 32, dtype=torch.uint8), gzip=True
    )
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz holds images of 32x32"):
        load_dataset("mnist", data_dir=tmp_path, val_size=1)


def test_loaded_tensors_do_not_alias_the_cache(tmp_path):
    fake_mnist(tmp_path)
    first = load_dataset("mnist", data_dir=tmp_path, val_size=1)
    first.test.y.zero_()
    first.test.x.zero_()
    second = load_dataset("mnist", data_dir=tmp_path, val_size=1)
    assert second.test.y.any() and second.test.x.any()


def test_dataset_to_device():
    ds = load_dataset("synthetic").to("cpu")
    assert ds.train.x.device.type == "cpu"
    assert len(ds.to(torch.device("cpu")).val) == 64


def test_digits_offline_sizes_and_stratification():
    ds = load_dataset("digits")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1293, 144, 360)
    assert ds.train.x.shape[1:] == (1, 8, 8) and ds.info.num_classes == 10
    counts = torch.bincount(ds.test.y, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: 1797 digits, 360 in test
    train_all = torch.cat([ds.train.x, ds.val.x])
    assert abs(float(train_all.mean())) < 1e-3 and abs(float(train_all.std()) - 1) < 1e-3
    assert dataset_status("digits")[0]


def test_synthetic_deterministic_and_balanced():
    a, b = load_dataset("synthetic"), load_dataset("synthetic")
    assert (len(a.train), len(a.val), len(a.test)) == (448, 64, 128)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert torch.bincount(a.test.y).tolist() == [32, 32, 32, 32]
    assert DATASETS.get("synthetic").info.input_shape == (1, 8, 8)


def test_synthetic_is_learnable():
    torch.manual_seed(0)
    ds = load_dataset("synthetic")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(ds.train.x), ds.train.y).backward()
        opt.step()
    accuracy = (model(ds.test.x).argmax(1) == ds.test.y).float().mean()
    assert accuracy > 0.7  # chance is 0.25


def test_every_info_is_consistent():
    for name, loader in DATASETS.items():
        info = loader.info
        assert info.name == name
        if loader.is_text:  # token ids: one dimension, nothing to normalise
            assert len(info.input_shape) == 1 and info.mean == info.std == ()
        else:
            assert len(info.mean) == len(info.std) == info.input_shape[0]
        assert info.how_to_get and info.description


@pytest.mark.realdata
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason=f"Fashion-MNIST not installed at {FASHION_DIR}")
def test_real_fashion_mnist():
    ds = load_dataset("fashion-mnist")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (55000, 5000, 10000)
    assert ds.source == str(FASHION_DIR)
    for split in (ds.train, ds.val, ds.test):
        assert int(split.y.min()) == 0 and int(split.y.max()) == 9
    assert abs(float(ds.train.x.mean())) < 0.01 and abs(float(ds.train.x.std()) - 1) < 0.01
