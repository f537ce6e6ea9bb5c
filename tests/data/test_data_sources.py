"""Data sources with an argument: ``imagefolder:PATH`` and ``npz:PATH``, resolution and stats overrides."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunelab.data import (
    DATA_SOURCES,
    DATASETS,
    DatasetLoader,
    ImageFolderSource,
    NpzSource,
    dataset_status,
    load_dataset,
    resolve_dataset,
)
from prunelab.data import files as files_module
from prunelab.data.locate import cache_root
from prunelab.errors import DataError, SpecError, UnknownNameError

CLASSES = ("cat", "ant", "bee")  # written unsorted: labels must follow the sorted names
SORTED = sorted(CLASSES)


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_folder(
    root: Path,
    splits: dict[str, int],
    colour: bool = True,
    size: tuple[int, int] = (8, 8),
    seed: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Write ``splits[split]`` PNGs per class and return, per split, the (N, H, W, C) pixels and
    labels in the order a loader must give them (sorted class names, then sorted file names)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, per_class in splits.items():
        xs, ys = [], []
        for name in CLASSES:
            for i in range(per_class):
                shape = (*size, 3) if colour else size
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                write_png(root / split / name / f"img{i}.png", pixels)
        for label, name in enumerate(SORTED):
            for i in range(per_class):
                pixels = np.asarray(Image.open(root / split / name / f"img{i}.png"))
                xs.append(pixels if colour else pixels[..., None])
                ys.append(label)
        out[split] = (np.stack(xs), np.array(ys))
    return out


def chw(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))


def hand_normalised(pixels: np.ndarray, mean, std) -> torch.Tensor:
    x = pixels.transpose(0, 3, 1, 2).astype(np.float64) / 255.0
    m = np.array(mean).reshape(1, -1, 1, 1)
    s = np.array(std).reshape(1, -1, 1, 1)
    return torch.from_numpy(((x - m) / s).astype(np.float32))


def hand_stats(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = pixels.astype(np.float64) / 255.0
    return x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2))


# --- imagefolder -----------------------------------------------------------------------------------


def test_imagefolder_train_test_colour(tmp_path):
    arrays = make_folder(tmp_path / "f", {"train": 6, "test": 2})
    text = f"imagefolder:{tmp_path / 'f'}"
    loader = resolve_dataset(text)
    assert isinstance(loader, ImageFolderSource) and isinstance(loader, DatasetLoader)
    assert loader.needs_files and resolve_dataset(text) is loader
    info = loader.info
    assert info.name == text
    assert (info.input_shape, info.num_classes, info.augment) == ((3, 8, 8), 3, False)
    assert info.default_val_size == 1  # 10% of 18, at least 1
    mean, std = hand_stats(arrays["train"][0])
    np.testing.assert_allclose(info.mean, mean, atol=1e-6)
    np.testing.assert_allclose(info.std, std, atol=1e-6)

    raw = loader.load_raw(None)
    assert raw.val_index is None
    assert raw.x_train.dtype == torch.uint8
    assert torch.equal(raw.x_train, chw(arrays["train"][0]))  # pixels round-trip exactly
    assert torch.equal(raw.y_train, torch.from_numpy(arrays["train"][1]))  # labels: sorted class names
    assert torch.equal(raw.x_test, chw(arrays["test"][0]))
    assert raw.y_test.tolist() == [0, 0, 1, 1, 2, 2]

    ds = load_dataset(text)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (17, 1, 6)
    torch.testing.assert_close(
        ds.test.x, hand_normalised(arrays["test"][0], info.mean, info.std), atol=1e-5, rtol=0
    )
    assert ds.source == str(tmp_path / "f")
    assert dataset_status(text) == (True, str(tmp_path / "f"))


def test_imagefolder_grayscale_and_mixed(tmp_path):
    arrays = make_folder(tmp_path / "g", {"train": 3, "test": 1}, colour=False)
    gray = resolve_dataset(f"imagefolder:{tmp_path / 'g'}")
    assert gray.info.input_shape == (1, 8, 8)
    raw = gray.load_raw(None)
    assert torch.equal(raw.x_train, chw(arrays["train"][0]))
    mean, std = hand_stats(arrays["train"][0])
    np.testing.assert_allclose(gray.info.mean, mean, atol=1e-6)
    np.testing.assert_allclose(gray.info.std, std, atol=1e-6)

    # One colour image makes the whole dataset RGB; grayscale ones get three equal channels.
    write_png(tmp_path / "g" / "train" / "ant" / "zcolour.PNG", np.full((8, 8, 3), (10, 20, 30), np.uint8))
    mixed = ImageFolderSource(str(tmp_path / "g"))
    assert mixed.info.input_shape == (3, 8, 8)
    x = mixed.load_raw(None).x_train
    assert len(x) == 10
    assert torch.equal(x[0], chw(arrays["train"][0][:1]).expand(1, 3, 8, 8)[0])
    assert x[3, :, 0, 0].tolist() == [10, 20, 30]  # ant's 4th file (sorted names), upper-case suffix


def test_imagefolder_val_folder_is_the_validation_set(tmp_path):
    arrays = make_folder(tmp_path / "f", {"train": 4, "val": 1, "test": 2})
    text = f"imagefolder:{tmp_path / 'f'}"
    loader = resolve_dataset(text)
    assert loader.info.default_val_size == 3
    raw = loader.load_raw(None)
    assert raw.val_index.tolist() == [12, 13, 14]  # val/ last in x_train
    mean, _ = hand_stats(arrays["train"][0])  # statistics of train/ only
    np.testing.assert_allclose(loader.info.mean, mean, atol=1e-6)

    ds = load_dataset(text)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (12, 3, 6)
    info = ds.info
    torch.testing.assert_close(
        ds.val.x, hand_normalised(arrays["val"][0], info.mean, info.std), atol=1e-5, rtol=0
    )
    assert ds.val.y.tolist() == [0, 1, 2]
    torch.testing.assert_close(
        ds.train.x, hand_normalised(arrays["train"][0], info.mean, info.std), atol=1e-5, rtol=0
    )
    assert len(load_dataset(text, val_size=3).val) == 3  # the val/ size itself is accepted
    with pytest.raises(DataError, match=r"val/.*val_size=2"):
        load_dataset(text, val_size=2)


def test_imagefolder_val_without_test_is_the_test_set(tmp_path):
    arrays = make_folder(tmp_path / "f", {"train": 5, "val": 2})
    loader = ImageFolderSource(str(tmp_path / "f"))
    raw = loader.load_raw(None)
    assert raw.val_index is None
    assert torch.equal(raw.x_test, chw(arrays["val"][0]))
    ds = load_dataset(f"imagefolder:{tmp_path / 'f'}")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (14, 1, 6)


def test_imagefolder_fingerprint_follows_content(tmp_path):
    make_folder(tmp_path / "f", {"train": 2, "test": 1})
    first = ImageFolderSource(str(tmp_path / "f")).fingerprint()
    assert len(first) == 16 and int(first, 16) >= 0
    assert ImageFolderSource(str(tmp_path / "f")).fingerprint() == first
    assert DatasetLoader.fingerprint(DATASETS.get("mnist")) is None
    write_png(tmp_path / "f" / "train" / "ant" / "img0.png", np.zeros((8, 8, 3), np.uint8))
    changed = ImageFolderSource(str(tmp_path / "f")).fingerprint()
    assert changed != first
    (tmp_path / "f" / "train" / "ant" / "img0.png").rename(tmp_path / "f" / "train" / "ant" / "renamed.png")
    assert ImageFolderSource(str(tmp_path / "f")).fingerprint() not in (first, changed)


def test_imagefolder_decodes_once_then_reads_the_cache(tmp_path, monkeypatch):
    arrays = make_folder(tmp_path / "f", {"train": 2, "val": 1, "test": 1})
    calls = []
    decode = files_module._decode_image

    def counting(data, path):
        calls.append(path)
        return decode(data, path)

    monkeypatch.setattr(files_module, "_decode_image", counting)
    first = ImageFolderSource(str(tmp_path / "f"))
    raw = first.load_raw(None)
    assert len(calls) == 12
    assert (cache_root() / "imagefolder" / f"{first.fingerprint()}.safetensors").is_file()

    second = ImageFolderSource(str(tmp_path / "f"))  # a new process, as far as caching goes
    again = second.load_raw(None)
    assert len(calls) == 12  # nothing decoded: read from the cache file
    assert torch.equal(again.x_train, raw.x_train) and torch.equal(again.val_index, raw.val_index)
    assert second.info == first.info
    assert torch.equal(again.x_train[:6], chw(arrays["train"][0]))


def test_imagefolder_file_changed_after_fingerprint(tmp_path):
    make_folder(tmp_path / "f", {"train": 2, "test": 1})
    loader = ImageFolderSource(str(tmp_path / "f"))
    loader.fingerprint()
    write_png(tmp_path / "f" / "test" / "bee" / "img0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="changed"):
        loader.load_raw(None)


def _no_train(root):
    (root / "test" / "a").mkdir(parents=True)


def _no_classes(root):
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()


def _empty_class(root):
    make_folder(root, {"train": 1, "test": 1})
    (root / "train" / "dog").mkdir()
    (root / "train" / "dog" / "notes.txt").write_text("not an image")


def _corrupt(root):
    make_folder(root, {"train": 1, "test": 1})
    (root / "train" / "bee" / "broken.png").write_bytes(b"\x89PNG not really")


def _truncated(root):
    make_folder(root, {"train": 1, "test": 1})
    path = root / "test" / "cat" / "img0.png"
    path.write_bytes(path.read_bytes()[:60])


def _mixed_sizes(root):
    make_folder(root, {"train": 2, "test": 1})
    write_png(root / "train" / "cat" / "big.png", np.zeros((10, 12, 3), np.uint8))


def _no_test(root):
    make_folder(root, {"train": 1})


def _unknown_class(root):
    make_folder(root, {"train": 1, "test": 1})
    write_png(root / "test" / "zebra" / "z.png", np.zeros((8, 8, 3), np.uint8))


def _empty_test(root):
    make_folder(root, {"train": 1})
    (root / "test" / "ant").mkdir(parents=True)


@pytest.mark.parametrize(
    ("make", "named", "says"),
    [
        (None, "f", "does not exist"),
        (_no_train, "f", "no train/"),
        (_no_classes, "f/train", "no class folders"),
        (_empty_class, "f/train/dog", "holds no images"),
        (_corrupt, "f/train/bee/broken.png", "cannot read image"),
        (_truncated, "f/test/cat/img0.png", "cannot read image"),
        (_mixed_sizes, "f/train/cat/big.png", r"12x10 pixels but most images are 8x8.*resize"),
        (_no_test, "f", "no test/ folder"),
        (_unknown_class, "f/test/zebra", "'zebra' is not one of the classes"),
        (_empty_test, "f/test", "holds no images"),
    ],
)
def test_imagefolder_bad_input(tmp_path, make, named, says):
    root = tmp_path / "f"
    if make is not None:
        make(root)
    text = f"imagefolder:{root}"
    with pytest.raises(DataError, match=says) as caught:
        load_dataset(text)
    assert str(tmp_path / named) in str(caught.value)
    found, message = dataset_status(text)
    if make in (_corrupt, _truncated, _mixed_sizes):
        assert found  # the cheap check sees the layout only
    else:
        assert not found and str(tmp_path / named) in message


def test_imagefolder_path_is_a_file(tmp_path):
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="is not a folder"):
        resolve_dataset(f"imagefolder:{tmp_path / 'file.png'}").info  # noqa: B018


# --- npz -------------------------------------------------------------------------------------------


def write_npz(path: Path, **arrays) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def npz_arrays(layout: str, dtype: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays for 3 classes in the given layout; labels of test reach the highest class."""
    rng = np.random.default_rng(seed)
    shapes = {
        "nhw": lambda n: (n, 5, 6),
        "nchw": lambda n: (n, 3, 5, 6),
        "nhwc": lambda n: (n, 5, 6, 3),
        "nhw1": lambda n: (n, 5, 6, 1),
    }[layout]
    out = {}
    for split, n in (("train", 10), ("test", 4)):
        if dtype == "uint8":
            out[f"x_{split}"] = rng.integers(0, 256, shapes(n), dtype=np.uint8)
        else:
            out[f"x_{split}"] = rng.random(shapes(n)).astype(dtype)
    out["y_train"] = np.array([0, 1] * 5, dtype=np.int64)
    out["y_test"] = np.array([0, 1, 2, 2], dtype=np.int32)
    return out


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64"])
@pytest.mark.parametrize(
    ("layout", "shape"),
    [("nhw", (1, 5, 6)), ("nchw", (3, 5, 6)), ("nhwc", (3, 5, 6)), ("nhw1", (1, 5, 6))],
)
def test_npz_layouts(tmp_path, layout, shape, dtype):
    arrays = npz_arrays(layout, dtype)
    path = write_npz(tmp_path / "d.npz", **arrays)
    text = f"npz:{path}"
    loader = resolve_dataset(text)
    assert isinstance(loader, NpzSource)
    info = loader.info
    assert (info.name, info.input_shape, info.num_classes) == (text, shape, 3)
    assert info.default_val_size == 1 and not info.augment
    x = arrays["x_train"]
    nchw = x[:, None] if layout == "nhw" else x if layout == "nchw" else x.transpose(0, 3, 1, 2)
    expected = nchw.astype(np.float64) / (255.0 if dtype == "uint8" else 1.0)
    np.testing.assert_allclose(info.mean, expected.mean(axis=(0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(info.std, expected.std(axis=(0, 2, 3)), atol=1e-6)

    raw = loader.load_raw(None)
    assert raw.x_train.dtype == (torch.uint8 if dtype == "uint8" else torch.float32)
    np.testing.assert_array_equal(raw.x_train.numpy(), nchw.astype(raw.x_train.numpy().dtype))
    assert raw.y_test.dtype == torch.int64 and raw.y_test.tolist() == [0, 1, 2, 2]

    ds = load_dataset(text, val_size=2)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (8, 2, 4)
    m = np.array(info.mean).reshape(1, -1, 1, 1)
    s = np.array(info.std).reshape(1, -1, 1, 1)
    torch.testing.assert_close(
        ds.train.x,
        torch.from_numpy(((expected - m) / s).astype(np.float32))[ds_train_idx(10, 2)],
        atol=1e-5,
        rtol=0,
    )
    assert loader.fingerprint() == hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def ds_train_idx(n: int, val: int) -> torch.Tensor:
    from prunelab.data import split_indices

    return split_indices(n, val)[0]


def test_npz_fingerprint_and_changed_file(tmp_path):
    path = write_npz(tmp_path / "d.npz", **npz_arrays("nhw", "uint8"))
    loader = NpzSource(str(path))
    first = loader.fingerprint()
    write_npz(path, **npz_arrays("nhw", "uint8", seed=1))
    assert NpzSource(str(path)).fingerprint() != first
    with pytest.raises(DataError, match="changed while this process was running"):
        loader.load_raw(None)


def _replace(**changes):
    def make(arrays):
        arrays.update(changes)
        return arrays

    return make


def _drop(key):
    def make(arrays):
        del arrays[key]
        return arrays

    return make


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (_drop("y_test"), r"lacks y_test \(it holds x_train, x_test, y_train\)"),
        (_replace(x_train=np.zeros((10, 5, 6, 5), np.uint8)), r"x_train .* shape \(10, 5, 6, 5\); expected"),
        (_replace(x_test=np.zeros((4, 30), np.uint8)), r"x_test .* shape \(4, 30\)"),
        (_replace(x_train=np.full((10, 5, 6), 2.0)), r"x_train .* floats in 2\.\.2.*\[0, 1\]"),
        (_replace(x_train=np.full((10, 5, 6), np.nan, np.float32)), r"x_train .*non-finite"),
        (_replace(x_train=np.zeros((10, 5, 6), np.int64)), r"x_train .* dtype int64; expected uint8"),
        (_replace(x_test=np.zeros((4, 3, 5, 6), np.uint8)), r"x_train images are \(1, 5, 6\).*x_test"),
        (
            _replace(x_train=np.zeros((0, 5, 6), np.uint8), y_train=np.zeros(0, np.int64)),
            "x_train .* no images",
        ),
        (
            _replace(y_train=np.full(10, 0.5, np.float32)),
            r"y_train in .*, index 0: bad label 0.5, not an integer",
        ),
        (_replace(y_train=np.zeros(9, np.int64)), r"y_train .* 9 labels but x_train has 10"),
        (_replace(y_test=np.array([0, -1, 0, 0])), r"y_test .* negative"),
        (_replace(y_train=np.zeros((10, 2), np.int64)), r"y_train .* shape \(10, 2\)"),
        (_replace(y_train=np.array(["a"] * 10)), r"y_train .* dtype <U1"),
    ],
)
def test_npz_bad_arrays(tmp_path, change, says):
    path = write_npz(tmp_path / "d.npz", **change(npz_arrays("nhw", "uint8")))
    with pytest.raises(DataError, match=says) as caught:
        load_dataset(f"npz:{path}")
    assert str(path) in str(caught.value)


def test_npz_labels_shaped_n1_are_accepted(tmp_path):
    arrays = npz_arrays("nhwc", "uint8")
    arrays["y_train"] = arrays["y_train"][:, None]
    ds = load_dataset(f"npz:{write_npz(tmp_path / 'd.npz', **arrays)}", val_size=0)
    assert ds.train.y.tolist() == arrays["y_train"][:, 0].tolist()


def test_npz_bad_files(tmp_path):
    with pytest.raises(DataError, match=r"no such file: .*missing\.npz"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    assert dataset_status(f"npz:{tmp_path / 'missing.npz'}")[0] is False
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match=r"junk\.npz is not a readable \.npz file"):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(DataError, match=r"one\.npy holds a single array"):
        load_dataset(f"npz:{tmp_path / 'one.npy'}")
    arrays = npz_arrays("nhw", "uint8")
    arrays["x_train"] = np.array([object()] * 10, dtype=object)
    write_npz(tmp_path / "obj.npz", **arrays)
    with pytest.raises(DataError, match=r"array x_train in .*obj\.npz cannot be read"):
        load_dataset(f"npz:{tmp_path / 'obj.npz'}")
    with pytest.raises(SpecError, match=r"needs a path.*npz:PATH"):
        resolve_dataset("npz:")


# --- resolution and stats --------------------------------------------------------------------------


def test_resolve_names_and_errors():
    assert resolve_dataset("mnist") is DATASETS.get("mnist")
    assert DATA_SOURCES.get("imagefolder") is ImageFolderSource and DATA_SOURCES.get("npz") is NpzSource
    assert ImageFolderSource.usage == "imagefolder:PATH" and NpzSource.usage == "npz:PATH"
    assert DATA_SOURCES.describe("npz").startswith("Arrays x_train")
    with pytest.raises(UnknownNameError) as caught:
        resolve_dataset("nope")
    message = str(caught.value)
    assert message.startswith("unknown dataset 'nope'.")
    assert all(name in message for name in DATASETS.names())
    assert "; or imagefolder:PATH, npz:PATH" in message
    with pytest.raises(UnknownNameError, match="Did you mean 'mnist'"):
        resolve_dataset("mnits")
    with pytest.raises(UnknownNameError, match="Did you mean 'imagefolder:/x'"):
        resolve_dataset("imagefoldr:/x")
    with pytest.raises(UnknownNameError):
        dataset_status("nope")


def test_stats_override():
    base = load_dataset("synthetic")
    ds = load_dataset("synthetic", stats=((0.5,), (0.25,)))
    assert (ds.info.mean, ds.info.std) == ((0.5,), (0.25,))
    assert resolve_dataset("synthetic").info.mean != (0.5,)  # the registered facts are untouched
    info = base.info
    raw_train = base.train.x * torch.tensor(info.std).view(1, -1, 1, 1) + torch.tensor(info.mean).view(
        1, -1, 1, 1
    )
    torch.testing.assert_close(ds.train.x, (raw_train - 0.5) / 0.25, atol=1e-5, rtol=0)
    with pytest.raises(DataError, match=r"3 mean and 3 std values but synthetic has 1 channel"):
        load_dataset("synthetic", stats=((0.1, 0.2, 0.3), (1.0, 1.0, 1.0)))
    with pytest.raises(DataError, match="std"):
        load_dataset("synthetic", stats=((0.5,), (0.0,)))
    with pytest.raises(DataError, match=r"stats must be \(mean, std\)"):
        load_dataset("synthetic", stats=(0.5, 0.25))


def test_stats_override_on_a_source(tmp_path):
    arrays = make_folder(tmp_path / "f", {"train": 2, "test": 1})
    text = f"imagefolder:{tmp_path / 'f'}"
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    ds = load_dataset(text, stats=imagenet)
    torch.testing.assert_close(ds.test.x, hand_normalised(arrays["test"][0], *imagenet), atol=1e-5, rtol=0)
    with pytest.raises(DataError, match=r"1 mean and 1 std values but imagefolder:.* has 3 channels"):
        load_dataset(text, stats=((0.5,), (0.5,)))
